"""Process entry point inside the venv: flags -> Runtime -> FastAPI app -> uvicorn.

The web UI is handed in as a `Frontend` (`launch.py` passes `webui.frontend`), so this
backend module never imports `webui/`; without one, or with `--nowebui`, the API is
served alone.

The page is served at once; the checkpoint loads in a background thread and the
first generation waits for it (`Runtime.ready`). Serving itself (host, port, TLS,
CORS, hooks run once listening: `--share`, `--autolaunch`) is `modules.app.server`.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from modules.app.cmd_args import parse_args, unsupported_flags

log = logging.getLogger("easel")


class Frontend(Protocol):
    """The web UI as the entry point sees it: an app factory and the `--share` hook."""

    def create_app(self, runtime): ...

    def share_hook(self, args): ...


def main(argv: list[str], *, frontend: Frontend | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.loglevel or logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for line in unsupported_flags(args):
        log.warning(line)
    from modules.app.server import ServeError, add_server_middleware, serve

    try:
        early = start_early_page(args)  # before torch and gradio load
    except ServeError as error:
        log.error("%s", error)
        return 2
    from modules.runtime import Runtime

    runtime = Runtime.create(args)
    try:
        cluster = start_cluster(runtime)  # --ray: the replicas generate, this process serves
    except ValueError as error:  # flags the cluster cannot hold (ClusterError)
        log.error("%s", error)
        return 2
    app = build_app(runtime, frontend)  # before the model load, so importing gradio has the CPU
    add_server_middleware(app, args)
    if cluster is None and not args.skip_load_model_at_start:
        threading.Thread(target=_load_initial_model, args=(runtime,), daemon=True).start()
    else:
        runtime.ready.set()
    try:
        serve(app, args, hooks=start_hooks(args, frontend), sock=early.stop() if early else None,
              on_stop=runtime.jobs.cancel_all)
    except ServeError as error:
        log.error("%s", error)
        return 2
    finally:
        runtime.jobs.stop()
        if cluster is not None:
            cluster.stop()
    return 0


def start_cluster(runtime):
    """Cluster mode (`--ray` / `--ray-address`, docs/cluster.md), else None: without those
    flags Ray is never imported."""
    if not (runtime.args.ray or runtime.args.ray_address):
        return None
    from modules.cluster.start import begin_cluster

    return begin_cluster(runtime)


def start_early_page(args):
    """The start-up page on the UI's socket (not with TLS or --nowebui): see early_page."""
    if args.nowebui or args.tls_certfile or args.tls_keyfile:
        return None
    from modules.app.early_page import EarlyPage, bind_listening_socket
    from modules.app.server import ServeError, bind_host, choose_port

    host = bind_host(args)
    port = choose_port(host, args)
    try:
        sock = bind_listening_socket(host, port)
    except OSError as error:
        raise ServeError(f"cannot serve on {host}:{port}: {error.strerror}") from error
    log.info("Start-up page on http://%s:%d/", host, port)
    return EarlyPage(sock).start()


def build_app(runtime, frontend: Frontend | None):
    """The API alone (`--nowebui`, or no frontend), or the UI with the API beside it."""
    if runtime.args.nowebui or frontend is None:
        from modules.api.app import create_api_app

        return create_api_app(runtime)
    return frontend.create_app(runtime)


def start_hooks(args, frontend: Frontend | None = None) -> list:
    """What runs once the server listens: the share tunnel, opening a browser."""
    hooks = []
    if args.share and not args.nowebui and frontend is not None:
        hooks.append(frontend.share_hook(args))
    if args.autolaunch:
        def autolaunch(host: str, port: int, url: str) -> None:
            import webbrowser

            webbrowser.open(url)

        hooks.append(autolaunch)
    return hooks


def _load_initial_model(runtime) -> None:
    try:
        runtime.models.load_initial(runtime.settings.current.sd_model_checkpoint,
                                    runtime.args.ckpt)
    except Exception as error:  # the UI still starts and shows the error
        log.error("No checkpoint loaded at start: %s", error)
    finally:
        runtime.ready.set()
