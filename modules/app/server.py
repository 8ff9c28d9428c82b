"""Serving the app the way A1111's flags ask: host, port, TLS, CORS, API log, hooks.

- Host: `--server-name` wins, then `--listen` (0.0.0.0), else 127.0.0.1 (A1111's order).
- Port: `--port` exactly (a port in use is a clear error, not a traceback); without it
  the UI takes 7860 or, like Gradio's launch, the next free port up to 7959; `--nowebui`
  takes 7861.
- `--tls-keyfile` / `--tls-certfile` serve HTTPS; `--timeout-keep-alive` (30 s);
  `--cors-allow-origins` / `--cors-allow-origins-regex`; `--api-log` logs each API call.
- The Host header must name a host this server serves (`modules.app.hosts`: loopback,
  the bound address, `--allowed-hosts`; any IP literal with `--listen`), else 400.
- Hooks run once the socket is listening, with the local URL (the share tunnel and
  `--autolaunch` need a server that answers); a failing hook is logged, never fatal.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("easel")

DEFAULT_UI_PORT, DEFAULT_API_PORT, PORT_SCAN = 7860, 7861, 100
STARTED_POLL_S = 0.05
SHUTDOWN_GRACE_S = 5  # open requests get this long after SIGTERM / Ctrl+C, then are cancelled


class ServeError(SystemExit):
    """A start-up problem the user can fix (port in use, missing TLS file)."""


def bind_host(args) -> str:
    return args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ServeError(f"cannot serve on {host}:{port}: {error.strerror}") from error
    return True


def choose_port(host: str, args) -> int:
    """`--port` as given (error when taken); otherwise the default, or the next free one."""
    if getattr(args, "port_given", True):
        if not port_is_free(host, args.port):
            raise ServeError(f"--port {args.port}: the port is already in use on {host}; "
                             f"stop the other server or choose another port")
        return args.port
    if args.nowebui:  # A1111's API-only server uses 7861 and nothing else
        return choose_port(host, _with_port(args, DEFAULT_API_PORT))
    for port in range(args.port, args.port + PORT_SCAN):
        if port_is_free(host, port):
            if port != args.port:
                log.info("Port %d is in use; serving on %d instead", args.port, port)
            return port
    raise ServeError(f"no free port in {args.port}-{args.port + PORT_SCAN - 1} on {host}; "
                     f"pass --port")


def _with_port(args, port: int):
    import argparse

    return argparse.Namespace(**{**vars(args), "port": port, "port_given": True})


def add_server_middleware(app, args) -> None:
    """CORS, the API request log and, outermost, the Host check (`modules.app.hosts`),
    for the UI app and the API-only app alike."""
    origins = [o.strip() for o in (args.cors_allow_origins or "").split(",") if o.strip()]
    if origins or args.cors_allow_origins_regex:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins,
                           allow_origin_regex=args.cors_allow_origins_regex,
                           allow_methods=["*"], allow_headers=["*"], allow_credentials=True)
    if args.api_log:
        @app.middleware("http")
        async def api_log(request, call_next):
            started = time.perf_counter()
            response = await call_next(request)
            if request.url.path.startswith("/sdapi/"):
                client = request.client.host if request.client else "-"
                log.info("API %s %s %s %d %.3fs", client, request.method, request.url.path,
                         response.status_code, time.perf_counter() - started)
            return response
    add_host_check(app, args)


def add_host_check(app, args) -> None:
    """Refuse Hosts this server does not serve (DNS rebinding); added last, so outermost."""
    from modules.app.hosts import HostCheckMiddleware, HostRules

    if args.subpath and not getattr(args, "allowed_hosts", None):
        log.info("--subpath: a proxy that forwards its public Host header needs that name "
                 "in --allowed-hosts (requests naming other hosts get 400)")
    app.add_middleware(HostCheckMiddleware, rules=HostRules.from_args(args))


def local_url(host: str, port: int, args) -> str:
    scheme = "https" if args.tls_certfile else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"{scheme}://{shown}:{port}{args.subpath or ''}/"


def serve(app, args, *, hooks: Sequence[Callable[[str, int, str], None]] = (),
          sock: socket.socket | None = None, on_stop: Callable[[], None] | None = None) -> None:
    """Serve `app` until stopped; each hook gets (host, port, local URL) once listening.

    `sock`: an already listening socket to serve on (the start-up page's, see
    `modules.app.early_page`); otherwise host and port come from the flags.
    `on_stop` runs as soon as SIGTERM / Ctrl+C arrives (the CLI stops the running job
    there), before uvicorn waits up to SHUTDOWN_GRACE_S for open requests.
    """
    import uvicorn

    host = bind_host(args)
    port = sock.getsockname()[1] if sock is not None else choose_port(host, args)
    _check_tls(args)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            timeout_keep_alive=args.timeout_keep_alive,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                            ssl_keyfile=args.tls_keyfile, ssl_certfile=args.tls_certfile)
    server = _stopping_server(uvicorn.Server)(config)
    server.on_stop = on_stop
    url = local_url(host, port, args)
    threading.Thread(target=_after_start, args=(server, hooks, host, port, url),
                     daemon=True).start()
    log.info("Serving on %s", url)
    server.run(sockets=[sock] if sock is not None else None)


def _stopping_server(base):
    """uvicorn's Server, calling `on_stop` when a stop signal arrives (uvicorn itself only
    stops accepting and then waits for the open requests, which wait for their job)."""

    class StoppingServer(base):
        on_stop: Callable[[], None] | None = None

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            if self.on_stop is not None:  # in a thread: a signal handler must not wait on locks
                threading.Thread(target=self.on_stop, name="easel-stop", daemon=True).start()

    return StoppingServer


def _check_tls(args) -> None:
    if bool(args.tls_keyfile) != bool(args.tls_certfile):
        raise ServeError("--tls-keyfile and --tls-certfile go together; give both")
    for flag, path in (("--tls-keyfile", args.tls_keyfile), ("--tls-certfile", args.tls_certfile)):
        if path:
            try:
                open(path, "rb").close()
            except OSError as error:
                raise ServeError(f"{flag} {path}: {error.strerror}") from error


def _after_start(server, hooks, host: str, port: int, url: str) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(STARTED_POLL_S)
    for hook in hooks:
        try:
            hook(host, port, url)
        except Exception as error:  # a hook (share link, browser) never stops the server
            log.warning("%s failed: %s", getattr(hook, "__name__", hook), error)
