"""Whole-app authentication: every route needs credentials unless its path is public.

When any login is configured (`--api-auth`, `--gradio-auth`, `--gradio-auth-path`),
`AuthMiddleware` wraps the whole app: API routes, `/internal/*`, extension routes, the
docs, the mounted UI and any route added later. A request passes when

- it is served by the UI mount and its path is in `public` (the login page and the
  static files it needs; empty unless the UI has its own login; passed on without its
  query string when nobody is logged in), or
- it carries HTTP Basic credentials of the users for its side (see `AuthRules`), or
- it is served by the UI mount and carries a session of the UI's own login
  (`session_user`, given by the front end: Gradio's cookie).

Otherwise it gets 401 (`WWW-Authenticate: Basic` unless the UI's login page is the way
in). Credentials: the API follows the UI's logins unless `--api-auth` is given
(`api_users`); the UI's routes take the UI's logins, or the API's when the UI has none.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import cookie_parser
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from modules.api.security import credentials_match, send_json
from modules.app.cmd_args import parse_auth

SessionUser = Callable[[Mapping[str, str]], "str | None"]
UNAUTHORIZED = {"detail": "Incorrect username or password"}


def ui_users(args) -> dict[str, str]:
    """Logins of `--gradio-auth "u:p,u2:p2"` and `--gradio-auth-path` (entries per line)."""
    users = parse_auth(getattr(args, "gradio_auth", None))
    path = getattr(args, "gradio_auth_path", None)
    if path:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            users.update(parse_auth(line))
    return users


def api_users(args) -> dict[str, str]:
    """`--api-auth`, or else the UI's logins: the API is never more open than the UI."""
    return parse_auth(getattr(args, "api_auth", None)) or ui_users(args)


@dataclass(frozen=True)
class AuthRules:
    """Who may use which side. `ui_app`: the mounted UI (None for the API alone)."""

    api: Mapping[str, str]
    ui: Mapping[str, str]
    public: Collection[str] = ()
    public_prefixes: tuple[str, ...] = ()
    ui_app: object | None = None
    session_user: SessionUser | None = field(default=None, compare=False)

    @classmethod
    def from_args(cls, args, **ui) -> AuthRules:
        return cls(api=api_users(args), ui=ui_users(args), **ui)

    @property
    def enabled(self) -> bool:
        return bool(self.api or self.ui)

    def is_public(self, path: str) -> bool:
        return path in self.public or path.startswith(self.public_prefixes)


def route_path(scope: Scope) -> str:
    """The path the router matches (without the ASGI root path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def served_by_ui(scope: Scope, ui_app: object | None) -> bool:
    """Whether the outer app's router would hand this request to the UI's mount: as the
    router does, the first full match wins, else the first partial one (wrong method)."""
    app = scope.get("app")
    if ui_app is None or app is None:
        return False
    partial = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return isinstance(route, Mount) and route.app is ui_app
        if match is Match.PARTIAL and partial is None:
            partial = route
    return isinstance(partial, Mount) and partial.app is ui_app


class AuthMiddleware:
    """Answer 401 to any request without valid credentials, except public UI paths."""

    def __init__(self, app: ASGIApp, *, rules: AuthRules) -> None:
        self.app = app
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.rules.enabled:
            await self.app(scope, receive, send)
            return
        ui_side = served_by_ui(scope, self.rules.ui_app)
        if self.authenticated(scope, ui_side):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        elif ui_side and self.rules.ui and self.rules.is_public(route_path(scope)):
            # Public, not logged in: no query parameters (Gradio's `/?all_endpoints=1`
            # would list every UI endpoint on the login page).
            await self.app({**scope, "query_string": b""}, receive, send)
        else:
            login_page = ui_side and self.rules.ui
            await send_json(send, 401, UNAUTHORIZED,
                            () if login_page else [(b"www-authenticate", b"Basic")])

    def authenticated(self, scope: Scope, ui_side: bool) -> bool:
        """Valid Basic credentials for the request's side, or (UI side) a UI session."""
        rules = self.rules
        headers = dict(scope.get("headers") or [])
        header = headers.get(b"authorization", b"").decode("latin-1")
        if credentials_match(header, (rules.ui or rules.api) if ui_side else rules.api):
            return True
        if ui_side and rules.ui and rules.session_user is not None:
            cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
            return rules.session_user(cookies) is not None
        return False


def protect(app, args, **ui) -> AuthRules:
    """Put `AuthMiddleware` around `app` (the last middleware added by the factories)."""
    rules = AuthRules.from_args(args, **ui)
    if rules.enabled:
        app.add_middleware(AuthMiddleware, rules=rules)
    return rules
