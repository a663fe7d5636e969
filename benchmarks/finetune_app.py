"""Fine-tune on upload through the web app, as a user does it: the issue's targets measured from the click.

Starts `python app.py`, and as soon as the page answers (or, with --warm, once the app has loaded its models)
uploads the same data as benchmarks/finetune_images.py or finetune_text.py to the Fine-tune tab through
gradio_client with the page's default settings, clicks Train, polls the page's progress every --poll seconds,
downloads the model zip the page offers, and scores it with `python -m engine eval … --model <zip>` on the
unseen images or reviews. Also reports the share of the machine's CPU the app used while the job trained.

    python benchmarks/finetune_app.py --kind image --seed 0     # prints one JSON line
    python benchmarks/finetune_app.py --kind text --seed 0
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine.finetune import default_config  # noqa: E402
from engine.vision.data import find_data_file  # noqa: E402
from finetune_images import draw_upload, make_upload  # noqa: E402
from finetune_text import reviews_upload  # noqa: E402
from load import cpu_seconds, free_port, wait_for_page  # noqa: E402


def page_settings(kind: str) -> list:
    """What the Fine-tune page sends with Train when nothing is changed: the engine's defaults."""
    image, text = default_config("image"), default_config("text")
    chosen = image if kind == "image" else text
    return [image.backbone, image.strategy, text.backbone, text.strategy, default_config("chargpt").init, chosen.time_budget,
            image.max_epochs, image.lr, image.batch_size, chosen.val_fraction, image.image_size, image.flip, image.seed,
            text.start_weight]


def write_csv(rows: list, path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def make_data(kind: str, seed: int, folder: Path, data_dir: str | None) -> tuple[Path, Path]:
    """(upload, unseen) files: 50 MNIST digits per class as a zip of class folders and the other 4,500 digits,
    or 1,000 written reviews as a CSV and the other 500."""
    if kind == "image":
        with np.load(find_data_file("mnist/mnist_subset.npz", data_dir)) as data:
            images, labels = data["x_test"], data["y_test"]
        upload_idx, unseen = draw_upload(labels, seed)  # the same draw as finetune_images.py --seed
        (folder / "upload").mkdir()
        (folder / "unseen").mkdir()
        return (make_upload(images[upload_idx], labels[upload_idx], folder / "upload"),
                make_upload(images[unseen], labels[unseen], folder / "unseen"))
    upload, unseen_by_kind, _ = reviews_upload(1000, seed)
    unseen = [row for _, rows in unseen_by_kind for row in rows]
    return write_csv(upload, folder / "reviews.csv"), write_csv(unseen, folder / "unseen.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["image", "text"], default="image")
    parser.add_argument("--seed", type=int, default=0, help="which digits or reviews are uploaded")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between progress polls (the page: 1)")
    parser.add_argument("--warm", action="store_true", help="click once the app has loaded its models, not at once")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="minilab-bench-") as tmp:
        tmp = Path(tmp)
        upload, unseen = make_data(args.kind, args.seed, tmp, args.data_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        log = tempfile.NamedTemporaryFile(prefix="minilab-bench-", suffix=".log", delete=False)
        app = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, MINILAB_OFFLINE="1"))
        try:
            wait_for_page(url, log.name)
            client = Client(url, verbose=False)
            if args.warm:
                client.predict("sst2", "warm", api_name="/classify_text")  # answers once sst2 is loaded
                time.sleep(5)
            owner = "bench" + "0" * 27
            label = {"image": "Images", "text": "Labelled text"}[args.kind]
            cpu_before, started = cpu_seconds(app.pid), time.perf_counter()
            client.predict(owner, label, [handle_file(str(upload))], *page_settings(args.kind), api_name="/finetune_start")
            while True:
                page = client.predict(owner, api_name="/finetune_poll")
                if any(word in page[0] for word in ("done", "failed", "cancelled", "time limit")):
                    break
                time.sleep(args.poll)
            seconds = time.perf_counter() - started
            app_cpu = cpu_seconds(app.pid) - cpu_before
        finally:
            app.terminate()
            app.wait(30)
        if "done" not in page[0]:
            sys.exit(f"the job did not finish: {page[0]}")
        download = page[8]
        model = download if isinstance(download, str) else download.get("path") or download.get("value")
        task = "image" if args.kind == "image" else "sentiment"
        scored = subprocess.run([sys.executable, "-m", "engine", "eval", task, "--model", model, "--data", str(unseen), "--json"],
                                cwd=ROOT, capture_output=True, text=True)
        if scored.returncode:
            sys.exit(scored.stderr[-2000:])
        accuracy = json.loads(scored.stdout.strip().splitlines()[-1])["accuracy"]
    with zipfile.ZipFile(model) as archive:
        card = json.loads(archive.read(next(name for name in archive.namelist() if name.endswith("card.json"))))
    target = 0.985 if args.kind == "image" else 0.92
    limit = 60 if args.kind == "image" else 30
    print(json.dumps({"benchmark": "finetune_app", "kind": args.kind, "seed": args.seed, "warm": args.warm, "poll_s": args.poll,
                      "seconds_from_click": round(seconds, 1), **({"epochs": card["metrics"].get("epochs_run")} if args.kind == "image" else {}),
                      "val_accuracy": card["metrics"].get("val_accuracy"), "unseen_accuracy": round(accuracy, 4),
                      "app_cpu_share": round(app_cpu / seconds / (os.cpu_count() or 1), 3),
                      "targets": {f"within_{limit}_s": seconds <= limit, f"unseen_accuracy_at_least_{target}": accuracy >= target}}))


if __name__ == "__main__":
    main()
