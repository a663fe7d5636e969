"""minilab: a pocket deep-learning lab in the browser.

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080 --share

Models load lazily on first use, so the page is up in seconds.
"""
from __future__ import annotations

import argparse
import os
import threading
import time

# Gradio's queue recomputes a summary of its last 10,000 events (a pandas DataFrame, a group-by, percentiles) after
# every single event, by default, for its monitoring page; minilab does not show that page. Under load that took
# more of the interpreter lock than some predictions: summarise every 1,000 events, over the last 1,000.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")

from demos import zerogpu  # noqa: I001 - first: on ZeroGPU `spaces` must be imported before anything touches CUDA
import gradio as gr

from demos import finetune, image, rl, system, text

TITLE = "minilab"
INTRO = ("**minilab**: play with real neural networks. Everything here runs on models minilab trained itself, "
         "offline; hub models join in when they are cached or reachable.")


def build_app() -> gr.Blocks:
    # Uploaded and generated files in Gradio's cache are deleted an hour after they were made (checked every
    # 30 minutes), so a long-running Space does not fill its disk; job folders are pruned by engine.jobs.
    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"# 🧪 minilab\n{INTRO}")
        # One random key per browser (localStorage): training jobs and the models they make belong to it,
        # so a reloaded page finds them again and no other browser ever sees them.
        owner = gr.BrowserState(None, storage_key="minilab-owner")
        with gr.Tabs():
            with gr.Tab("Image classification", id="image") as image_page:
                image_tab = image.build()
            with gr.Tab("Text", id="text") as text_page:
                text_tab = text.build(owner)
            with gr.Tab("Fine-tune", id="finetune"):
                finetune_tab = finetune.build(owner)
            with gr.Tab("Reinforcement learning", id="rl") as rl_page:
                rl_tab = rl.build(owner)
            with gr.Tab("System", id="system") as system_page:
                system_tab = system.build()
        demo.load(image_tab["refresh"], inputs=image_tab["model"], outputs=image_tab["model"], api_name=False)
        image_page.select(image_tab["refresh"], inputs=image_tab["model"], outputs=image_tab["model"], api_name=False)
        demo.load(image.describe_model, inputs=image_tab["model"], outputs=image_tab["about"], api_name=False)
        text_models = [text_tab["sentiment_model"], text_tab["lm_model"]]
        demo.load(text_tab["refresh"], inputs=text_models, outputs=text_models, api_name=False)
        text_page.select(text_tab["refresh"], inputs=text_models, outputs=text_models, api_name=False)
        inside = text_tab["inside"]
        text_page.select(inside["refresh"], inputs=inside["model"], outputs=inside["model"], api_name=False)
        demo.load(text.describe_model, inputs=text_tab["sentiment_model"], outputs=text_tab["sentiment_about"], api_name=False)
        demo.load(text.describe_model, inputs=text_tab["lm_model"], outputs=text_tab["lm_about"], api_name=False)
        # The browser's owner key first, then reattach to a training job that outlived a reload.
        reattach = demo.load(rl_tab["ensure_owner"], inputs=owner, outputs=owner, api_name=False)
        reattach.then(rl_tab["poll"], inputs=[owner, rl_tab["agent"]], outputs=rl_tab["poll_outputs"], api_name=False,
                      show_progress="hidden")
        reattach.then(finetune_tab["poll"], inputs=owner, outputs=finetune_tab["poll_outputs"], api_name=False,
                      show_progress="hidden")
        reattach.then(inside["poll"], inputs=owner, outputs=inside["poll_outputs"], api_name=False, show_progress="hidden")
        reattach.then(finetune_tab["restore_settings"], inputs=owner, outputs=[finetune_tab["kind"], finetune_tab["budget"]],
                      api_name=False, show_progress="hidden")
        rl_page.select(rl_tab["refresh"], inputs=[rl_tab["owner"], rl_tab["agent"]], outputs=rl_tab["agent"], api_name=False)
        system_page.select(system_tab["refresh"], outputs=system_tab["outputs"], api_name=False)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start the minilab web app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (needs internet)")
    parser.add_argument("--max-file-size", default=os.environ.get("MINILAB_MAX_FILE_SIZE", "50mb"), help="upload size cap, e.g. 50mb")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("MINILAB_CONCURRENCY", 2)),
                        help="requests served at once per event (inference)")
    parser.add_argument("--queue-size", type=int, default=int(os.environ.get("MINILAB_QUEUE_SIZE", 64)))
    return parser.parse_args(argv)


WARM_MODELS = ("cifar10", "sst2", "shakespeare", "mnist")  # what the tabs open on


def warm_up(pause_s: float = 0.5) -> None:
    """Import torch and load the models the tabs open on, after the page is up, so that no first click (or the
    first of many users at once) waits seconds for a model to load. A training job started meanwhile goes
    first: its clock is running. The warm-up runs PyTorch on one thread, like a request: a thread that owns an
    OpenMP team, even an idle one, makes OpenMP put the job's threads to sleep between operations (a job then
    used 67 of the machine's 80 CPU-seconds instead of 77; engine.device.use_request_threads says more)."""
    from engine.device import use_request_threads
    from engine.jobs import default_runner
    from engine.registry import default_registry

    use_request_threads()
    for name in WARM_MODELS:
        try:
            while default_runner().training():
                time.sleep(pause_s)
            default_registry().get(name)
        except Exception:  # a missing model shows up in the System tab, a bad MINILAB_* setting on the page
            pass  # that starts a job; never stop the server for either
    try:  # last: a spare worker process with torch imported, so the first training job starts at once
        prewarm = getattr(default_runner().backend, "prewarm", None)
        if prewarm is not None:
            prewarm(default_runner().nice)
    except Exception as error:  # noqa: BLE001 - the first job then starts its own worker, a few seconds slower
        print(f"no spare worker process: {error}", flush=True)


def load_for_zerogpu() -> None:
    """On ZeroGPU, load the models the tabs open on now, in the main thread: the only thread where `spaces` lets a
    model be placed on "cuda" (it becomes real inside each GPU call). Models loaded later stay on the CPU."""
    from engine.registry import default_registry

    for name in WARM_MODELS:
        try:
            default_registry().get(name)
        except Exception as error:  # noqa: BLE001 - the System tab reports a model that cannot load
            print(f"{name} not preloaded for ZeroGPU: {error}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if zerogpu.ACTIVE:
        load_for_zerogpu()
    demo = build_app()
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    # Gradio's dispatcher looks for work every millisecond, idle or not; each look takes the GIL from the threads
    # computing predictions. Every 10 ms costs a request at most 10 ms of waiting and frees that time for work.
    demo._queue.sleep_when_free = float(os.environ.get("MINILAB_QUEUE_POLL_S", 0.01))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=args.max_file_size, show_error=True,
                theme=gr.themes.Soft(), footer_links=["api", "gradio"], prevent_thread_lock=True)
    threading.Thread(target=warm_up, daemon=True).start()
    try:
        demo.block_thread()
    finally:  # Ctrl-C or a stop signal: jobs get the stop flag, then their worker processes end with the server
        from engine.jobs import default_runner

        default_runner().shutdown(timeout=5)


if __name__ == "__main__":
    main()
