"""Deploy minilab to a Hugging Face Space (Gradio SDK).

    python deploy_space.py --space USER/NAME [--token T] [--private] [--dry-run]

What goes up is exactly the files git tracks (`git ls-files`), read from the working tree: nothing git-ignored
(runs/, .whl/, caches) and nothing untracked. The Space then mirrors that list: files on the Space that are not
tracked here are deleted (the Space's .gitattributes is always kept). huggingface_hub stores the binary files
(safetensors, images, zip) through Xet/LFS by itself, so git-lfs is not needed on this machine.

Exit status: 0 done (or the dry run listed the files), 1 the upload failed, 2 refused before uploading anything
(not a git checkout, README front matter incomplete, a file over 10 MB, no token, Hub unreachable).
See docs/spaces.md, which also describes the git route.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent
MAX_FILE_BYTES = 10_000_000  # 10 MB: the Hub wants bigger files in LFS/Xet; minilab keeps every file below it
REQUIRED_FRONT_MATTER = ("title", "sdk", "sdk_version", "app_file")
DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT = 3.0
TOKEN_HELP = ("create a token with write access at https://huggingface.co/settings/tokens, then pass it with "
              "--token hf_..., or export HF_TOKEN=hf_..., or run `hf auth login` once")


class Refusal(Exception):
    """A reason not to upload, said in the user's words (exit status 2)."""


def tracked_files(root: Path) -> list[str]:
    """The files git tracks under root, as paths relative to root (sorted), skipping ones deleted on disk."""
    try:
        listing = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, text=True,
                                 timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Refusal(f"could not run git: {error}") from None
    if listing.returncode != 0:
        raise Refusal(f"{root} is not a git checkout (git ls-files: {listing.stderr.strip()}); the upload is the "
                      "list of tracked files, so it needs one")
    return sorted(path for path in listing.stdout.split("\0") if path and (root / path).is_file())


def untracked_files(root: Path) -> list[str]:
    """Files that are neither tracked nor ignored: not uploaded, which may surprise (a new module not yet added)."""
    listing = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--others", "--exclude-standard"],
                             capture_output=True, text=True, timeout=30)
    return sorted(path for path in listing.stdout.split("\0") if path)


def front_matter(readme: Path) -> dict[str, object]:
    """The YAML block at the top of README.md, which configures the Space (sdk, sdk_version, app_file, ...)."""
    import yaml  # PyYAML comes with huggingface_hub and gradio

    if not readme.is_file():
        raise Refusal(f"{readme} is missing: a Space is configured by the YAML front matter of its README.md")
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        raise Refusal(f"{readme.name} has no YAML front matter (a block between '---' lines at the top)")
    try:
        block = text.split("---", 2)[1]
        data = yaml.safe_load(block)
    except (IndexError, yaml.YAMLError) as error:
        raise Refusal(f"{readme.name}'s front matter is not valid YAML: {error}") from None
    return data if isinstance(data, dict) else {}


def check_front_matter(meta: dict[str, object], files: list[str]) -> None:
    """Refuse unless the front matter says what a Gradio Space needs, and app_file is among the uploaded files."""
    missing = [key for key in REQUIRED_FRONT_MATTER if not meta.get(key)]
    if missing:
        raise Refusal(f"README.md's front matter lacks {', '.join(missing)}; a Gradio Space needs "
                      f"{', '.join(REQUIRED_FRONT_MATTER)} (see https://huggingface.co/docs/hub/spaces-config-reference)")
    if meta["sdk"] != "gradio":
        raise Refusal(f"README.md's front matter says sdk: {meta['sdk']}; minilab is a Gradio app (sdk: gradio)")
    if meta["app_file"] not in files:
        raise Refusal(f"app_file {meta['app_file']} (README.md's front matter) is not a tracked file")
    version = meta.get("python_version")
    if version is not None and not isinstance(version, str):
        raise Refusal(f"python_version: {version} in README.md's front matter is read by YAML as a number; "
                      'quote it (python_version: "3.10")')


def human_size(size: int) -> str:
    """1234567 -> '1.2 MB' (decimal units, as the 10 MB limit)."""
    if size < 1000:
        return f"{size} B"
    if size < 1_000_000:
        return f"{size / 1000:.1f} kB"
    return f"{size / 1_000_000:.1f} MB"


def hub_reachable(endpoint: str) -> tuple[bool, str]:
    """Can we open a TCP connection to the Hub's host within CONNECT_TIMEOUT? DNS lookups can hang offline, so the
    attempt runs in a daemon thread with a deadline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False, "HF_HUB_OFFLINE is set"
    url = urlparse(endpoint)
    host = url.hostname or endpoint
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[tuple[bool, str]] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
            result.append((True, f"{host}:{port} reachable"))
        except OSError as error:
            result.append((False, f"cannot connect to {host}:{port}: {error.__class__.__name__}: {error}"))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(CONNECT_TIMEOUT + 0.5)
    return result[0] if result else (False, f"{host}:{port} did not answer within {CONNECT_TIMEOUT:.0f} s")


def find_token(given: str | None) -> str | None:
    """--token, else HF_TOKEN, else the token `hf auth login` saved."""
    if given:
        return given
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token()


def glob_escape(path: str) -> str:
    """upload_folder matches allow_patterns with fnmatch: make a literal path match only itself."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in path)


def upload(root: Path, space: str, files: list[str], token: str, private: bool) -> str:
    """Create the Space if needed and upload the files in one commit; returns the Space's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    user = api.whoami()["name"]
    print(f"logged in as {user}")
    url = api.create_repo(space, repo_type="space", space_sdk="gradio", exist_ok=True,
                          private=True if private else None)
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    revision = head.stdout.strip() or "working tree"
    api.upload_folder(repo_id=space, repo_type="space", folder_path=root,
                      allow_patterns=[glob_escape(path) for path in files], delete_patterns=["*"],
                      commit_message=f"Deploy minilab ({revision}) with deploy_space.py")
    return str(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Upload minilab's tracked files to a Hugging Face Gradio Space.")
    parser.add_argument("--space", required=True, help="the Space, as USER/NAME (created if it does not exist)")
    parser.add_argument("--token", help="a Hugging Face token with write access (default: HF_TOKEN, then the saved "
                                        "login)")
    parser.add_argument("--private", action="store_true", help="create the Space private (an existing one keeps "
                                                               "its visibility)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network, no token")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to upload (default: this script's)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        if args.space.count("/") != 1 or not all(args.space.split("/")):
            raise Refusal(f"--space wants USER/NAME, got {args.space!r}")
        files = tracked_files(root)
        check_front_matter(front_matter(root / "README.md"), files)
        sizes = {path: (root / path).stat().st_size for path in files}
        if args.dry_run:
            for path in files:
                print(f"{human_size(sizes[path]):>9}  {path}")
        total = sum(sizes.values())
        target = f"{os.environ.get('HF_ENDPOINT', DEFAULT_ENDPOINT).rstrip('/')}/spaces/{args.space}"
        print(f"{len(files)} files, {human_size(total)} ({total} bytes) "
              f"{'would be uploaded' if args.dry_run else 'to upload'} to {target}")
        if left_out := untracked_files(root):
            print(f"note: {len(left_out)} untracked file(s) are not uploaded (git add them to include them): "
                  + ", ".join(left_out[:10]) + (" ..." if len(left_out) > 10 else ""))
        too_big = [f"{path} ({human_size(sizes[path])})" for path in files if sizes[path] > MAX_FILE_BYTES]
        if too_big:
            raise Refusal(f"file(s) over {human_size(MAX_FILE_BYTES)}: {', '.join(too_big)}; minilab keeps every "
                          "file under 10 MB (shrink it, or leave it out of git)")
        if args.dry_run:
            return 0
        try:
            token = find_token(args.token)
        except ImportError:
            raise Refusal("huggingface_hub is not installed: pip install huggingface_hub") from None
        except Exception as error:  # e.g. HF_OIDC_RESOURCE set and its token exchange failed
            raise Refusal(f"could not read a Hugging Face token ({error}): {TOKEN_HELP}") from None
        if not token:
            raise Refusal(f"no Hugging Face token: {TOKEN_HELP}")
        endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
        ok, reason = hub_reachable(endpoint)
        if not ok:
            raise Refusal(f"the Hugging Face Hub ({endpoint}) is not reachable, so nothing was uploaded: {reason}")
    except Refusal as refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        url = upload(root, args.space, files, token, args.private)
    except KeyboardInterrupt:
        print("error: interrupted; the Space may hold part of the upload, run again to finish", file=sys.stderr)
        return 130
    except Exception as error:  # the Hub's answers (bad token, no write access, quota) and network errors
        print(f"error: the upload to {args.space} failed: {error.__class__.__name__}: {error}", file=sys.stderr)
        return 1
    print(f"done: {url} (the Space rebuilds now; its logs are on that page)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
