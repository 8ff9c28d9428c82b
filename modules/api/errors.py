"""A1111's error bodies and status codes for the HTTP API.

Every failure is a JSON body `{error, detail, body, errors}` (docs/a1111-semantics.md,
"Serving, errors and images"): `error` is the exception class, `detail` the message a client shows,
`errors` the exception text. Invalid request bodies keep FastAPI's 422
`{"detail": [{loc, msg, type}, ...]}` shape (A1111 uses FastAPI's handler for them) with `error`
added. Known backend errors map to 4xx codes here, so a bad request never looks like a server crash.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.errors import Unavailable, without_paths
from modules.jobs import JobInterrupted
from modules.models.errors import ModelLoadError
from modules.pipeline.params import ParamsError
from modules.settings import SettingsError
from modules.styles import StyleError
from modules.upscaling.registry import UpscalerError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, raised by route handlers."""

    def __init__(self, status_code: int, detail: str, *, error: str | None = None):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.error = error or type(self).__name__


def not_available(what: str) -> ApiError:
    """The 501 answer for routes and options whose capability does not exist yet."""
    return ApiError(501, f"{what} is not available yet", error="NotImplementedError")


def error_body(error: str, detail: Any, errors: str = "", body: Any = "") -> dict[str, Any]:
    return {"error": error, "detail": detail, "body": body, "errors": errors}


def status_for(exc: BaseException) -> int:
    """The status code for an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc.status_code
    if isinstance(exc, (ParamsError, SettingsError, StyleError)):
        return 422
    if isinstance(exc, ModelLoadError):  # a file that cannot be used is never a crash
        return 404 if "no such checkpoint" in str(exc) else 422
    if isinstance(exc, UpscalerError):  # an unknown name, or a file that cannot be used
        return 422
    if isinstance(exc, PermissionError):
        return 403
    if isinstance(exc, Unavailable):
        return 503
    if isinstance(exc, JobInterrupted):  # a queued job cancelled because the server stops
        return 503
    if isinstance(exc, NotImplementedError):
        return 501
    return 500


def response_for(exc: BaseException) -> JSONResponse:
    status = status_for(exc)
    if status >= 500 and status != 501:
        log.error("API error: %s", exc, exc_info=exc)
    detail = exc.detail if isinstance(exc, ApiError) else str(exc)
    name = exc.error if isinstance(exc, ApiError) else type(exc).__name__
    if isinstance(detail, str):  # clients never see where the server keeps its files
        detail = without_paths(detail)
    body = error_body(name, detail, errors=without_paths(str(exc)))
    return JSONResponse(body, status_code=status)


def _validation_items(exc: RequestValidationError) -> list[dict[str, Any]]:
    """loc/msg/type only: echoing `input` could carry values JSON cannot encode."""
    return [{"loc": [str(part) for part in item.get("loc", ())], "msg": str(item.get("msg", "")),
             "type": str(item.get("type", ""))} for item in exc.errors()]


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    items = _validation_items(exc)
    summary = "; ".join(f"{'.'.join(i['loc'][1:]) or 'body'}: {i['msg']}" for i in items)
    return JSONResponse({"detail": items, "error": "RequestValidationError", "body": "",
                         "errors": summary}, status_code=422)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    body = error_body("HTTPException", exc.detail, errors=str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return response_for(exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(ApiError, _on_error)
    app.add_exception_handler(Exception, _on_error)


class ApiRoute(APIRoute):
    """A route whose errors always become A1111 error bodies.

    Catching here instead of in app-wide handlers keeps the API's error shape off the
    routes of an app the API is mounted on (the Gradio UI has its own conventions).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return await _on_validation_error(request, exc)
            except StarletteHTTPException as exc:
                return await _on_http_error(request, exc)
            except Exception as exc:  # noqa: BLE001 - every error becomes a JSON body
                return response_for(exc)

        return guarded
