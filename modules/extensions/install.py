"""Installing an extension from a git URL (the Extensions tab's "Install from URL").

Refused unless the server is local, or `--enable-insecure-extension-access` is given
(docs/a1111-semantics.md, "Installing extensions"): `--listen`, `--share` and `--server-name` expose
the page to others, and installing runs their code. The clone goes into the user extensions folder
with `git clone --depth 1` in a subprocess; the new extension loads on the next start.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ACCESS_DENIED = ("Extension access is disabled because the server is not local "
                 "(--listen, --share or --server-name); start with "
                 "--enable-insecure-extension-access to allow it.")
CLONE_TIMEOUT_S = 600


class ExtensionAccessError(PermissionError):
    """Installing or changing extensions is not allowed with these flags."""


def extension_access_allowed(args) -> bool:
    if getattr(args, "enable_insecure_extension_access", False):
        return True
    return not (getattr(args, "listen", False) or getattr(args, "share", False)
                or getattr(args, "server_name", None))


def folder_name(url: str, dirname: str | None) -> str:
    """The folder to clone into: `dirname`, or the repository name from the URL."""
    name = (dirname or "").strip() or url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
        raise ValueError(f"invalid extension folder name {name!r}")
    return name


def install_from_url(args, target_root: Path, url: str, *, dirname: str | None = None,
                     branch: str | None = None) -> Path:
    """Clone `url` into `target_root/<name>`; return the new folder."""
    if not extension_access_allowed(args):
        raise ExtensionAccessError(ACCESS_DENIED)
    url = url.strip()
    if not re.match(r"^(https?://|git@|ssh://)", url):
        raise ValueError(f"not a git URL: {url!r}")
    target = target_root / folder_name(url, dirname)
    if target.exists():
        raise FileExistsError(f"extension folder {target} already exists")
    command = ["git", "clone", "--depth", "1", *(["--branch", branch] if branch else []),
               "--", url, str(target)]
    target_root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=CLONE_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"git clone failed: {done.stderr.strip() or done.stdout.strip()}")
    return target
