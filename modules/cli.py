"""Process entry point inside the venv: flags -> Runtime -> FastAPI app -> uvicorn.

The page is served at once; the checkpoint loads in a background thread and the
first generation waits for it (`Runtime.ready`).
"""

from __future__ import annotations

import logging
import threading

from modules.cmd_args import parse_args

log = logging.getLogger("easel")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from modules.runtime import Runtime

    runtime = Runtime.create(args)
    app = build_app(runtime)  # before the model load, so importing gradio has the CPU
    if not args.skip_load_model_at_start:
        threading.Thread(target=_load_initial_model, args=(runtime,), daemon=True).start()
    else:
        runtime.ready.set()
    host = "0.0.0.0" if args.listen else (args.server_name or "127.0.0.1")
    import uvicorn

    log.info("Serving on http://%s:%d", host, args.port)
    uvicorn.run(app, host=host, port=args.port, log_level="warning")
    runtime.jobs.stop()
    return 0


def build_app(runtime):
    """The API alone (`--nowebui`), or the Gradio UI with the API beside it."""
    if runtime.args.nowebui:
        from modules.api.app import create_api_app

        return create_api_app(runtime)
    from webui.app import create_app

    return create_app(runtime)


def _load_initial_model(runtime) -> None:
    try:
        runtime.models.load_initial(runtime.settings.current.sd_model_checkpoint,
                                    runtime.args.ckpt)
    except Exception as error:  # the UI still starts and shows the error
        log.error("No checkpoint loaded at start: %s", error)
    finally:
        runtime.ready.set()
