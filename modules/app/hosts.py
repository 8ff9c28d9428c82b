"""The Host header check against DNS rebinding: a request names a host we serve, or 400.

A web page on `evil.example` can point its name at 127.0.0.1 and then script requests
to the local server as same-origin; the browser still sends `Host: evil.example`. So
every request (HTTP and websocket) must name, in its Host header (port ignored):

- a loopback name: `localhost` (and `*.localhost`), `127.0.0.1` and other 127.x, `::1`;
- the bound address (`--server-name`, or the `--listen` address) and `--server-name`;
- a name listed in `--allowed-hosts a,b` (`*.example.com` matches subdomains; `*`
  turns the check off);
- with `--listen` (or a `--server-name` that is an unspecified address): any IP
  literal, so `http://192.168.1.20:7860` keeps working on a LAN, plus this machine's
  own host name (`socket.gethostname()`, and `<name>.local`). Other DNS names must be
  listed: a rebinding attack needs a DNS name, never an IP literal;
- with `--share`: `*.gradio.live`, the share tunnel's public names.

Behind a `--subpath` reverse proxy the proxy's public name must be listed unless the
proxy sends the upstream address as Host (nginx's default). A request without a Host
header is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from modules.api.security import send_json

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNSPECIFIED = ("0.0.0.0", "::", "")
SHARE_DOMAIN = "*.gradio.live"


def split_host(header: str) -> str:
    """`Host` value -> the lowercase name without port, brackets or trailing dot."""
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None


def parse_allowed_hosts(spec: str | None) -> tuple[str, ...]:
    """`--allowed-hosts "a.example, *.b.example"` -> normalised names; a bad one is an error."""
    names = []
    for entry in (spec or "").split(","):
        if not entry.strip():
            continue
        name = split_host(entry)
        bare = name.removeprefix("*.")
        if name != "*" and (not bare or any(c in bare for c in "/@ ") or "*" in bare):
            raise SystemExit(f"--allowed-hosts: {entry.strip()!r} is not a host name")
        names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class HostRules:
    names: frozenset[str]
    patterns: tuple[str, ...]  # "*.example.com" entries, kept with the leading "*."
    any_ip: bool
    any_host: bool

    @classmethod
    def from_args(cls, args) -> HostRules:
        listed = parse_allowed_hosts(getattr(args, "allowed_hosts", None))
        server_name = split_host(getattr(args, "server_name", None) or "")
        everywhere = bool(getattr(args, "listen", False)) or (
            bool(server_name) and server_name in UNSPECIFIED)
        names = {*LOOPBACK_NAMES, *(n for n in listed if not n.startswith("*"))}
        if server_name:
            names.add(server_name)
        if everywhere:
            machine = socket.gethostname().lower().rstrip(".")
            names.update({machine, f"{machine}.local"})
        patterns = [n for n in listed if n.startswith("*.")] + ["*.localhost"]
        if getattr(args, "share", False):
            patterns.append(SHARE_DOMAIN)
        return cls(names=frozenset(names), patterns=tuple(patterns), any_ip=everywhere,
                   any_host="*" in listed)

    def allows(self, header: str | None) -> bool:
        if self.any_host:
            return True
        if not header:
            return False
        host = split_host(header)
        if host in self.names or any(host.endswith(p[1:]) for p in self.patterns):
            return True
        address = ip_literal(host)
        return address is not None and (self.any_ip or address.is_loopback)


class HostCheckMiddleware:
    """Answer 400 (naming the Host and the flag) to a Host this server does not serve."""

    def __init__(self, app: ASGIApp, *, rules: HostRules) -> None:
        self.app = app
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"host")
        header = raw.decode("latin-1") if raw is not None else None
        if self.rules.allows(header):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        shown = "no Host header" if not header else f"Host {split_host(header)!r}"
        await send_json(send, 400, {"error": "InvalidHost", "field": "Host", "detail": (
            f"{shown} is not a name this server answers to (DNS rebinding protection); "
            "start with --allowed-hosts <name> to serve it")})
