"""A start-up page served from the first second, on the socket the app will use.

Importing torch and gradio and building the UI take several seconds on a small CPU
(docs/performance.md, "Start-up"). So that a browser opened at launch gets an answer
at once instead of "connection refused", the CLI binds the listening socket before
those imports and serves this standard-library page from it: "Easel is starting",
reloading itself every second; `/sdapi/` paths answer 503 with A1111's error body.
When the real app is built, the placeholder stops taking connections and the same
socket goes to uvicorn, so a client never meets a closed port in between.

Not used with TLS (the placeholder speaks plain HTTP) or `--nowebui` (API clients
should see the API or nothing).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN_BACKLOG = 2048
# Every placeholder answer carries this header, so tools can wait for the real app.
STARTING_HEADER = "X-Easel-Starting"
PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>Easel</title>
<meta http-equiv="refresh" content="1"><style>body{font-family:system-ui,sans-serif;
display:flex;height:90vh;align-items:center;justify-content:center;color:#444}</style>
</head><body><p>Easel is starting&hellip; this page turns into the UI by itself.</p>\
</body></html>"""


def bind_listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), as uvicorn would open it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith("/sdapi/"):
            body = json.dumps({"error": "ServiceUnavailable", "detail": "Easel is starting",
                               "body": "", "errors": ""}).encode()
            self._answer(503, "application/json", body, retry=True)
        else:
            self._answer(200, "text/html; charset=utf-8", PAGE)

    do_POST = do_GET  # noqa: N815

    def _answer(self, status: int, kind: str, body: bytes, *, retry: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header(STARTING_HEADER, "1")
        if retry:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # quiet: start-up noise only
        pass


class EarlyPage:
    """Serves the placeholder on `sock` in a thread until `stop()`; never closes `sock`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._server = ThreadingHTTPServer(sock.getsockname()[:2], _Handler,
                                           bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = sock
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "EarlyPage":
        self._thread.start()
        return self

    def stop(self) -> socket.socket:
        """Stop answering (the socket stays open and listening); returns it."""
        self._server.shutdown()
        self._thread.join()
        return self.sock
