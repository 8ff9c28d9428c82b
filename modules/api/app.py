"""The A1111-compatible HTTP API as a FastAPI app, or mounted on the UI's app.

`create_api_app(runtime)` is `--nowebui`: the API alone, with its docs. `register_api(app,
runtime)` adds the same routes to an existing app (the Gradio UI's, with `--api`).
Both add the body-size limit (`--max-body-mb`); authentication covers the whole app and
is added by the app factories (`create_api_app` here, `webui.app.create_app`) through
`modules.api.auth.protect`. Routes live in `routes_*.py`; bodies in `schemas.py`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware

from modules.api.auth import protect
from modules.api.errors import ApiRoute, install_error_handlers
from modules.api.routes_control import ControlRoutes
from modules.api.routes_generation import GenerationRoutes
from modules.api.routes_listing import ListingRoutes
from modules.api.schemas import InternalProgressResponse
from modules.api.security import BodyLimitMiddleware

DEFAULT_MAX_BODY_MB = 64.0


def create_api_app(runtime) -> FastAPI:
    """The API alone (`--nowebui`), with `/docs` and `/openapi.json`."""
    app = FastAPI(title="Easel API", version=runtime.version,
                  description="A1111-compatible Stable Diffusion API")
    install_error_handlers(app)
    register_api(app, runtime)
    protect(app, runtime.args)  # every route, `/internal/*` and later ones included
    return app


def register_api(app: FastAPI, runtime) -> None:
    """Add `/sdapi/v1/*` and `/internal/progress` to `app`, with the body limit.

    Authentication is the caller's: `modules.api.auth.protect` around the whole app."""
    router = APIRouter(route_class=ApiRoute)
    GenerationRoutes(runtime).register(router)
    control = ControlRoutes(runtime)
    control.register(router)
    ListingRoutes(runtime).register(router)
    router.add_api_route("/internal/progress", control.internal_progress, methods=["POST"],
                         response_model=InternalProgressResponse)
    app.include_router(router)
    from modules.api.extension_routes import register_extension_routes

    register_extension_routes(app, runtime)
    add_middleware(app, runtime.args)
    runtime.jobs.start()


def add_middleware(app: FastAPI, args) -> None:
    app.add_middleware(GZipMiddleware, minimum_size=1000)

    @app.middleware("http")
    async def process_time(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Process-Time"] = f"{time.perf_counter() - started:.4f}"
        return response

    max_mb = getattr(args, "max_body_mb", None) or DEFAULT_MAX_BODY_MB
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(max_mb * 1024 * 1024))
