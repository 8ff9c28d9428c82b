"""Installing an extension from a git URL (the Extensions tab's "Install from URL").

Allowed for a local, unauthenticated session or a logged-in one (issue #17): a server
others can reach (`--listen`, `--share`, a non-loopback `--server-name`, a `--subpath`
proxy, `--allowed-hosts`) needs `--enable-insecure-extension-access`
(docs/a1111-semantics.md, "Installing extensions") and, unlike A1111, a login
(`--gradio-auth` or `--api-auth`), since installing runs the extension's code. A URL
whose host is or resolves to a private, loopback or link-local address is refused
unless `--allow-private-extension-urls` (`url_check.py`); git then follows no
redirects. The clone goes into the user extensions folder with `git clone --depth 1`
in a subprocess; the new extension loads on the next start.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

from modules.extensions.url_check import refuse_private_host
from modules.paths import login_configured, serves_only_locally

log = logging.getLogger("easel")

ACCESS_DENIED = ("Extension access is disabled because the server is not local "
                 "(--listen, --share, --server-name, --subpath or --allowed-hosts); start with "
                 "--enable-insecure-extension-access to allow it.")
LOGIN_REQUIRED = ("Installing extensions on a server others can reach needs a login: start "
                  "with --gradio-auth (or --api-auth) besides "
                  "--enable-insecure-extension-access.")
CLONE_TIMEOUT_S = 600


class ExtensionAccessError(PermissionError):
    """Installing or changing extensions is not allowed with these flags."""


def server_is_local(args) -> bool:
    """Only this machine can reach the server (see `modules.paths.serves_only_locally`)."""
    return serves_only_locally(args)


def extension_access_denial(args) -> str | None:
    """Why installing is refused with these flags, or None when it is allowed."""
    if server_is_local(args):
        return None
    if not getattr(args, "enable_insecure_extension_access", False):
        return ACCESS_DENIED
    return None if login_configured(args) else LOGIN_REQUIRED


def extension_access_allowed(args) -> bool:
    return extension_access_denial(args) is None


def folder_name(url: str, dirname: str | None) -> str:
    """The folder to clone into: `dirname`, or the repository name from the URL."""
    name = (dirname or "").strip() or url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
        raise ValueError(f"invalid extension folder name {name!r}")
    return name


def install_from_url(args, target_root: Path, url: str, *, dirname: str | None = None,
                     branch: str | None = None) -> Path:
    """Clone `url` into `target_root/<name>`; return the new folder."""
    denial = extension_access_denial(args)
    if denial:
        raise ExtensionAccessError(denial)
    url = url.strip()
    if not re.match(r"^(https?://|git@|ssh://)", url):
        raise ValueError(f"not a git URL: {url!r}")
    private_ok = getattr(args, "allow_private_extension_urls", False)
    if not private_ok:
        refuse_private_host(url, ExtensionAccessError)
    target = target_root / folder_name(url, dirname)
    if target.exists():
        raise FileExistsError(f"extension folder {target} already exists")
    guard = [] if private_ok else ["-c", "http.followRedirects=false"]  # no way round
    command = ["git", *guard, "clone", "--depth", "1",
               *(["--branch", branch] if branch else []), "--", url, str(target)]
    target_root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=CLONE_TIMEOUT_S)
    if done.returncode != 0:  # git's own words (host, port) stay in the log: no oracle
        log.warning("git clone of %s failed: %s", url, done.stderr.strip() or done.stdout.strip())
        raise RuntimeError("git clone failed (the reason is in the server log)")
    return target
