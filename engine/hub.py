"""Share a model folder on the Hugging Face Hub: what the Fine-tune tab's "Push" button does.

Offline (this project's usual case) the answer comes within a few seconds and says why; nothing hangs.
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.errors import UserError
from engine.registry import HF_ENDPOINT, host_reachable

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def push_model_folder(folder: str | Path, repo_id: str, token: str, private: bool = True) -> str:
    """Upload the folder (weights, card, labels) to a model repository; returns its URL."""
    repo_id, token = (repo_id or "").strip(), (token or "").strip()
    if not token:
        raise UserError("Paste a Hugging Face access token with write permission first (huggingface.co/settings/tokens).")
    if not REPO_ID.match(repo_id):
        raise UserError(f"{repo_id!r} is not a repository id: write it as your-name/model-name.")
    folder = Path(folder)
    if not (folder / "card.json").is_file():
        raise UserError("There is no trained model to push yet.")
    reachable, why = host_reachable(HF_ENDPOINT)
    if not reachable:
        raise UserError(f"The Hugging Face Hub cannot be reached from this server ({why}). "
                        "Download the zip instead, and upload it to the Hub from a machine that is online.")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=HF_ENDPOINT, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload a model trained in minilab")
    except HfHubHTTPError as error:
        raise UserError(f"The Hub refused the upload: {str(error).splitlines()[0]}") from error
    except OSError as error:
        raise UserError(f"The upload to the Hub failed: {error}") from error
    return f"{HF_ENDPOINT}/{repo_id}"
