"""Images in and out of the API: base64 (with or without a `data:` prefix) and URLs.

Responses carry bare base64 PNGs with the infotext in the `parameters` text chunk
(docs/a1111-semantics.md, "Serving, errors and images"). Requests may send base64, or an http(s)
URL, which is fetched only when the `api_enable_requests` setting allows it; with
`api_forbid_local_requests` every address the host resolves to must be a global one, so a client
cannot make the server read loopback, private or link-local services. Redirects are refused rather
than followed, since a redirect could point anywhere. Every picture is refused from its
header when it has more than `--max-input-image-pixels` pixels
(`modules.imaging.decode.open_bounded`), before any pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

from PIL import Image

from modules.api.errors import ApiError
from modules.imaging.decode import DEFAULT_MAX_INPUT_PIXELS, InvalidImage, open_bounded
from modules.imaging.save import png_metadata

log = logging.getLogger(__name__)

MAX_FETCH_BYTES = 64 * 1024 * 1024
FETCH_TIMEOUT_S = 30
Resolver = Callable[[str], Sequence[str]]


def encode_png_base64(image: Image.Image, infotext: str | None = None) -> str:
    """Bare base64 of a PNG that keeps the image's text info plus `parameters`."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_metadata(image, infotext))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + encode_png_base64(image)


def decode_base64_bytes(text: str) -> bytes:
    """Bytes of a base64 string, with or without a `data:...;base64,` prefix."""
    if text.startswith("data:"):
        text = text.split(",", 1)[1] if "," in text else ""
    try:
        return base64.b64decode(text.strip(), validate=False)
    except (binascii.Error, ValueError) as error:
        raise ApiError(400, f"Invalid encoded image: {error}") from error


def open_image(data: bytes, *, field: str = "image",
               max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> Image.Image:
    """A fully loaded PIL image; unreadable bytes are a 400, a picture whose header says
    it has more than `max_pixels` pixels a 422 naming `field` (refused before decoding)."""
    try:
        return open_bounded(data, field=field, max_pixels=max_pixels)
    except InvalidImage as error:
        raise ApiError(400, f"Invalid encoded image: {error}") from error


def system_resolver(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise ApiError(400, f"Cannot resolve host {host!r}: {error}") from error
    return [str(info[4][0]) for info in infos]


def is_forbidden_address(address: str) -> bool:
    """True for anything that is not a plain global unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (not ip.is_global or ip.is_loopback or ip.is_link_local or ip.is_private
            or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def verify_url(url: str, *, forbid_local: bool, resolve: Resolver = system_resolver) -> None:
    """Raise a 400/403 unless `url` is http(s) and (if asked) resolves to global addresses."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, f"Invalid image URL {url!r}")
    if not forbid_local:
        return
    addresses = resolve(parts.hostname)
    if not addresses:
        raise ApiError(400, f"Cannot resolve host {parts.hostname!r}")
    for address in addresses:
        if is_forbidden_address(address):
            raise ApiError(403, f"Request to local resource not allowed: {parts.hostname} "
                                f"resolves to {address}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        raise urllib.error.URLError(f"redirects to {newurl!r}; redirects are not followed")


def fetch_url(url: str) -> bytes:
    """The body at `url`. Every failure reads the same to the client ("could not fetch
    the image"), so answers cannot tell a closed port from a refusing service; the
    reason goes to the log."""
    opener = urllib.request.build_opener(_NoRedirects())
    try:
        with opener.open(url, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read(MAX_FETCH_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        log.warning("image URL %r not fetched: %s", url, error)
        raise ApiError(400, "image URL: could not fetch the image") from None
    if len(data) > MAX_FETCH_BYTES:
        raise ApiError(413, f"Image at {url!r} is larger than {MAX_FETCH_BYTES} bytes")
    return data


def decode_image(text: str, settings, *, field: str = "image",
                 max_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
                 resolve: Resolver = system_resolver,
                 fetch: Callable[[str], bytes] = fetch_url) -> Image.Image:
    """An image from a request field: base64 (optionally `data:`) or an allowed URL,
    at most `max_pixels` pixels (see `input_pixel_limit`)."""
    if text.startswith(("http://", "https://")):
        if not settings.api_enable_requests:
            raise ApiError(403, "Requests not allowed: image URLs are disabled "
                                "(setting api_enable_requests)")
        verify_url(text, forbid_local=settings.api_forbid_local_requests, resolve=resolve)
        return open_image(fetch(text), field=field, max_pixels=max_pixels)
    return open_image(decode_base64_bytes(text), field=field, max_pixels=max_pixels)


def input_pixel_limit(runtime) -> int:
    """`--max-input-image-pixels`: the most pixels a picture a client sends may have."""
    return getattr(runtime.args, "max_input_image_pixels", None) or DEFAULT_MAX_INPUT_PIXELS
