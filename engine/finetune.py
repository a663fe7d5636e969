"""Fine-tune on upload: one entry point for the three kinds, shared by the UI's job runner and the CLI.

    kind "image"   -> engine.vision.finetune.finetune_images     (zip of class folders, or images + CSV)
    kind "text"    -> engine.text.finetune.finetune_text_classifier (CSV/TSV with text and label columns)
    kind "chargpt" -> engine.text.finetune.finetune_chargpt      (a .txt)

`finetune_job` wraps one in a function for engine.jobs: the upload is copied into the job's private folder
first (the browser's copy may vanish), progress goes to the job's events, cancel/pause come through
should_stop, and the model folder is written inside the job's folder.
"""
from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Callable

from engine.checkpoints import zip_model_folder
from engine.errors import UserError
from engine.jobs import JobContext

KINDS = ("image", "text", "chargpt")


def default_config(kind: str):
    if kind == "image":
        from engine.vision.finetune import ImageFinetuneConfig

        return ImageFinetuneConfig()
    if kind == "text":
        from engine.text.finetune import TextFinetuneConfig

        return TextFinetuneConfig()
    if kind == "chargpt":
        from engine.text.finetune import CharFinetuneConfig

        return CharFinetuneConfig()
    raise UserError(f"Unknown kind of fine-tune {kind!r}; choose one of {', '.join(KINDS)}.")


def run_finetune(kind: str, paths: list[str | Path], config, workdir: str | Path, out: str | Path,
                 on_progress: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
                 command: str = "") -> dict:
    """Train one kind of model from an upload; returns {"folder", "metrics", "history", ...}."""
    from engine.device import training_device

    device = training_device()
    if kind == "image":
        from engine.vision.finetune import finetune_images

        result = finetune_images(paths, config, workdir, out, on_progress, should_stop, device, command)
    elif kind == "text":
        from engine.text.finetune import finetune_text_classifier

        result = finetune_text_classifier(paths, config, out, on_progress, should_stop, device, command)
    elif kind == "chargpt":
        from engine.text.finetune import finetune_chargpt

        result = finetune_chargpt(paths, config, out, on_progress, should_stop, device, command)
    else:
        raise UserError(f"Unknown kind of fine-tune {kind!r}; choose one of {', '.join(KINDS)}.")
    if result["metrics"].get("classes"):  # the card has them too; a plain list is handy outside minilab
        Path(result["folder"], "labels.txt").write_text("\n".join(result["metrics"]["classes"]) + "\n", encoding="utf-8")
    return result


def finetune_job(kind: str, paths: list[str | Path], config, name: str, command: str = "minilab Fine-tune tab"
                 ) -> Callable[[JobContext], dict]:
    """A job for engine.jobs.JobRunner.submit: a partial of a module-level function, so it can be pickled and
    run in a worker process or on a Ray node."""
    config.validate()
    return functools.partial(_finetune_in_job, kind, [str(path) for path in paths], config, name, command)


def _finetune_in_job(kind: str, paths: list[str], config, name: str, command: str, ctx: JobContext) -> dict:
    upload = ctx.workdir / "upload"
    upload.mkdir()
    copies = []
    for path in map(ctx.input_path, paths):
        if not path.is_file():
            raise UserError(f"{path.name}: the uploaded file is gone; please upload it again.")
        copies.append(Path(shutil.copy(path, upload / path.name)))
    result = run_finetune(kind, copies, config, ctx.workdir, ctx.workdir / name, lambda event: ctx.report(**event),
                          ctx.should_stop, command)
    shutil.rmtree(upload, ignore_errors=True)  # the model is what stays; the data was the user's
    # The download zip is made here, in the job's process, not by the web server when the page asks for it.
    zip_model_folder(result["folder"], Path(result["folder"]).parent / f"{name}.zip")
    return {**result, "kind": kind, "name": name}
