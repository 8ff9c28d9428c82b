"""HTTP routes added by extensions, behind the same `--api-auth` as `/sdapi/v1/*`.

Extensions register an `app_started` callback; it receives an `ExtensionApp`, whose
`add_api_route(path, endpoint, methods=[...])` puts the route on a router that
carries the API's Basic-auth check as a FastAPI dependency (besides the whole-app
check of `modules.api.auth`). So, unlike A1111 (where
`on_app_started` routes bypass `--api-auth`; docs/a1111-semantics.md, "Extension routes"), an
extension's routes are protected wherever they are mounted. Raw access to the FastAPI app is not
offered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request

from modules.api.auth import api_users
from modules.api.errors import ApiRoute
from modules.api.security import credentials_match


def auth_dependency(users: Mapping[str, str]) -> Callable:
    """A dependency answering 401 (A1111's body and header) without valid credentials."""
    def require_auth(request: Request) -> None:
        if users and not credentials_match(request.headers.get("authorization"), users):
            raise HTTPException(401, "Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})
    return require_auth


class ExtensionApp:
    """What `app_started` callbacks get: a place to add authenticated API routes.

    `side_work` is the server's bounded lane for picture work done outside the job queue
    (`JobQueue.side_work`): a route that decodes or processes client pictures holds it
    (`with app.side_work:`) so that N clients cannot multiply memory.
    """

    def __init__(self, *, router: APIRouter, version: str, side_work=None):
        self._router = router
        self.version = version
        self.paths: list[str] = []
        self.side_work = side_work if side_work is not None else contextlib.nullcontext()

    def add_api_route(self, path: str, endpoint: Callable, *,
                      methods: Sequence[str] = ("GET",), **options) -> None:
        if not path.startswith("/"):
            raise ValueError(f"extension route {path!r} must start with '/'")
        self._router.add_api_route(path, endpoint, methods=list(methods), **options)
        self.paths.append(path)


def register_extension_routes(app: FastAPI, runtime) -> ExtensionApp | None:
    """Run the `app_started` callbacks once per app and mount what they added."""
    if runtime.extensions is None or getattr(app.state, "easel_extension_routes", False):
        return None
    app.state.easel_extension_routes = True
    users = api_users(runtime.args)
    router = APIRouter(route_class=ApiRoute, dependencies=[Depends(auth_dependency(users))])
    extension_app = ExtensionApp(router=router, version=runtime.version,
                                 side_work=runtime.jobs.side_work)
    runtime.extensions.call("app_started", extension_app)
    app.include_router(router)
    return extension_app
