"""The whole-app authentication rules as the Gradio UI needs them.

`protect_app(app, args)` runs after `gr.mount_gradio_app`: it finds the mounted Gradio
app and puts `modules.api.auth.AuthMiddleware` around everything, with

- the public paths: only with the UI's own login (`--gradio-auth`), the login page
  and the static files it loads (`PUBLIC_PATHS`, `PUBLIC_PREFIXES`), nothing else;
- Gradio's session: the cookie Gradio's `/login` sets (`access-token-<id>` or its
  `-unsecure-` twin), valid while Gradio holds the token, so the page keeps working
  after a login exactly as Gradio's own `login_check` sees it.

Gradio's login page embeds the app's API info (every event's widget labels, defaults and
choices, checkpoint names included); with a UI login the page's events are therefore
"undocumented" (still callable by the page, left out of that info), and the public paths
are served without query parameters (`/?all_endpoints=1` would list them anyway).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.routing import Mount

from modules.api.auth import AuthRules, protect

# The login page ("/"), its form's POST, and what the page loads before anyone logs in
# (as measured in Chromium: tests/test_security_browser_login.py), plus the favicon.
PUBLIC_PATHS = frozenset({"/", "/login", "/login/", "/theme.css", "/favicon.ico"})
PUBLIC_PREFIXES = ("/assets/", "/static/")


def gradio_app_of(app):
    """The Gradio app `mount_gradio_app` mounted on `app` (the last mount at "/")."""
    mounts = [r.app for r in app.router.routes if isinstance(r, Mount) and r.path == ""]
    if not mounts:
        raise RuntimeError("the Gradio UI is not mounted at '/'")
    return mounts[-1]


def session_user(gradio_app):
    """A function: the request's cookies -> the Gradio user logged in, or None."""
    def user(cookies: Mapping[str, str]) -> str | None:
        for name in (f"access-token-{gradio_app.cookie_id}",
                     f"access-token-unsecure-{gradio_app.cookie_id}"):
            token = cookies.get(name)
            if token and token in gradio_app.tokens:
                return gradio_app.tokens[token]
        return None
    return user


def undocument_events(blocks) -> None:
    """Leave the page's events out of Gradio's API info (the public login page shows it)."""
    for fn in blocks.fns.values():
        if fn.api_visibility == "public":
            fn.api_visibility = "undocumented"


def protect_app(app, args) -> AuthRules:
    """Authentication for every route of the UI's app (API routes beside it included)."""
    gradio_app = gradio_app_of(app)
    rules = protect(app, args, ui_app=gradio_app, public=PUBLIC_PATHS,
                    public_prefixes=PUBLIC_PREFIXES, session_user=session_user(gradio_app))
    if rules.ui:
        undocument_events(gradio_app.get_blocks())
    return rules
