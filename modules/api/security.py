"""ASGI pieces guarding the API: HTTP Basic credentials and a request-body size limit.

`credentials_match` checks `Authorization: Basic` in constant time; `modules.api.auth`
uses it to protect the whole app (every route, not a list of prefixes). A failed check
answers 401 with `{"detail": "Incorrect username or password"}` as A1111 does.

The body limit (`--max-body-mb`) is checked against `Content-Length` before anything
is read; a body sent without one is buffered up to the limit. Both answer 413.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def send_json(send: Send, status: int, body: dict,
                    headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


def basic_user(header: str | None) -> str | None:
    """The user name of an `Authorization: Basic ...` header (already checked by the auth
    middleware when auth is on), or None: whose jobs "stop my jobs" stops."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded.partition(":")[0] or None


def credentials_match(header: str | None, users: Mapping[str, str]) -> bool:
    """True when an `Authorization: Basic ...` header names a known user and password."""
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    user, sep, password = decoded.partition(":")
    expected = users.get(user)
    if not sep or expected is None:
        hmac.compare_digest(password.encode(), password.encode())  # same work either way
        return False
    return hmac.compare_digest(password.encode("utf-8"), expected.encode("utf-8"))


class BodyLimitMiddleware:
    """Answer 413 to request bodies over `max_bytes`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> dict:
        limit_mb = self.max_bytes / (1024 * 1024)
        return {"error": "PayloadTooLarge", "body": "", "errors": "",
                "detail": f"Request body is larger than the limit of {limit_mb:g} MB "
                          "(--max-body-mb)"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await send_json(send, 413, self._detail())
                return
            await self.app(scope, receive, send)  # the server enforces Content-Length framing
            return
        messages = await self._read_streamed(receive)
        if messages is None:
            await send_json(send, 413, self._detail())
            return
        await self.app(scope, _replay(messages, receive), send)

    async def _read_streamed(self, receive: Receive) -> list[Message] | None:
        """Buffer a body sent without Content-Length; None once it passes the limit."""
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
