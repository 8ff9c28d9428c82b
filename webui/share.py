"""`--share`: a public `*.gradio.live` link to the local server, as A1111 gives on Colab.

Gradio makes the link with a tunnel: it asks its API server for a relay, downloads its
`frpc` client once, and runs it against our port. All of that needs the internet, so a
machine without it (or behind a firewall) gets one clear warning and keeps serving
locally: `--share` never stops the start.

Our app is a FastAPI app served by uvicorn, not `Blocks.launch()`, so the tunnel is
opened here once the server listens (`modules.app.server.serve` hooks).
"""

from __future__ import annotations

import logging
import secrets

log = logging.getLogger("easel")

HELP = ("the link needs internet access to Gradio's share servers (api.gradio.app) and "
        "its frpc tunnel client (downloaded once from cdn-media.huggingface.co)")


def create_share_link(host: str, port: int) -> str:
    """Open the tunnel to `host:port` and return the public URL; raises on any failure."""
    from gradio import networking

    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return networking.setup_tunnel(local, port, secrets.token_urlsafe(32), None, None)


def share_hook(args):
    """The start-up hook for `--share`: log the public URL, or why there is none."""
    def share(host: str, port: int, url: str) -> None:
        if not (getattr(args, "gradio_auth", None) or getattr(args, "gradio_auth_path", None)):
            log.warning("--share without --gradio-auth: anyone with the link can use this "
                        "machine")
        try:
            link = create_share_link(host, port)
        except Exception as error:  # no network, blocked, binary missing: serve locally
            cause = error.__cause__ or error
            log.warning("--share: no public link could be made (%s: %s); %s. Easel is still "
                        "serving on %s", type(error).__name__, cause, HELP, url)
            return
        log.info("Running on public URL: %s", link)

    return share
