"""Refusing git URLs whose host is on a private network (issue #17, item 5).

Install from URL makes the server fetch whatever URL a client names; without a check,
a client could use it to reach the server's own network (loopback services, the LAN,
cloud metadata at 169.254.169.254). The URL's host is resolved and every address must
be global (not private, loopback, link-local, shared, reserved, unspecified or
multicast); `--allow-private-extension-urls` lifts the rule. The name is resolved here
and again by git: a DNS answer that changes in between is not caught (see
docs/security.md).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


def url_host(url: str) -> str:
    """The host of an `https://`, `ssh://` or scp-like `git@host:path` URL ("" if none)."""
    if url.startswith("git@"):
        rest = url[4:]
        if rest.startswith("["):
            return rest[1:].partition("]")[0].lower()
        return rest.partition(":")[0].lower()
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def non_global(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address when it is not a public unicast one, else None."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return ip if (not ip.is_global or ip.is_multicast) else None


def refuse_private_host(url: str, error: type[Exception] = PermissionError, *,
                        resolve=socket.getaddrinfo) -> None:
    """Raise `error` when the URL's host is or resolves to a non-global address."""
    host = url_host(url)
    if not host:
        raise ValueError(f"no host in the git URL {url!r}")
    try:
        addresses = sorted({info[4][0] for info in resolve(host, None)})
    except (OSError, UnicodeError) as failure:
        raise ValueError(f"cannot resolve the host {host!r} of {url!r}: {failure}") from failure
    for address in addresses:
        found = non_global(address)
        if found is not None:
            raise error(f"{url!r}: the host {host!r} is {found}, a private, loopback or "
                        "link-local address; start with --allow-private-extension-urls to "
                        "install from it")
