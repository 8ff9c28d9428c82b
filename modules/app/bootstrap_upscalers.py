"""First-run setup of spandrel, the loader of upscaler architectures, without touching torch.

Standard library only (it runs from `launch.py` before the venv is usable).

spandrel imports torchvision, and torchvision works only when it was built for the
installed torch. Where it is (CUDA desktops, Colab: PyPI's torch and torchvision are
built together), spandrel runs inside the app. Where it is not (our CPU machines keep
the local torch 2.13.0+cpu wheel; PyPI's torchvision 0.28.0 for it is a CUDA build that
fails on import), the app's torch stays, and a separate environment with a working
torch + torchvision pair runs spandrel models in a worker process. In order:

1. spandrel already imports in the app's venv: nothing to do.
2. Install pyproject.toml's `upscalers` extra (torchvision + spandrel) into the app's
   venv, constrained to the app's torch version; keep it only if `import spandrel` works,
   else uninstall both again.
3. Build `.venv-upscalers/` from pyproject.toml's `[tool.easel].upscaler-env` (its own
   pinned torch + torchvision pair, with pip only, so the local wheels pip's config
   points at are used), unless `--skip-upscaler-env` was given.

Every step says what it does; none changes the app's torch (`bootstrap._install`
checks that after any install).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from modules.app import os_support, pyproject

UPSCALER_VENV_DIR = ".venv-upscalers"
MARKER = ".easel-installed"
PROBE = "import spandrel, torchvision; print(torchvision.__version__)"


def probe(python: Path) -> bool:
    """True when `python` can import spandrel (and with it torchvision)."""
    result = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True,
                            check=False)
    return result.returncode == 0


def app_requirements(root: Path) -> list[str]:
    """torchvision + spandrel for the app's venv: the `upscalers` extra."""
    return list(pyproject.read(root)["project"]["optional-dependencies"]["upscalers"])


def env_requirements(root: Path) -> list[str]:
    """The exact pins of `.venv-upscalers/`: `[tool.easel].upscaler-env`."""
    return list(pyproject.easel(root)["upscaler-env"])


def digest(root: Path) -> str:
    listed = [*app_requirements(root), "--", *env_requirements(root)]
    return "upscalers-" + hashlib.sha256("\n".join(listed).encode()).hexdigest()[:16]


def env_python(root: Path, os_name: str = os.name) -> Path:
    """The upscaler environment's interpreter, as the venv of this OS names it
    (`.venv-upscalers\\Scripts\\python.exe` on Windows)."""
    return os_support.venv_python(root / UPSCALER_VENV_DIR, os_name)


def ensure(root: Path, python: Path, *, install, build_env: bool) -> str:
    """Make spandrel usable; returns "app", "separate" or "none" (where it runs).

    `install(args)` installs into the app's venv under its torch constraint
    (`bootstrap._pip` with the constraint file).
    """
    if probe(python):
        return "app"
    print("Installing torchvision + spandrel for the app's torch", flush=True)
    try:
        install(app_requirements(root))
    except subprocess.CalledProcessError:
        print("that install failed", flush=True)
    if probe(python):
        return "app"
    _uninstall(python)
    if not build_env:
        print("spandrel upscalers need a torchvision this torch lacks; --skip-upscaler-env: "
              "only ESRGAN files (our RRDBNet) will load", flush=True)
        return "none"
    return "separate" if build_separate_env(root) else "none"


def _uninstall(python: Path) -> None:
    print("torchvision does not work with this torch build; removing it and spandrel "
          "again (the app's torch stays)", flush=True)
    subprocess.call([str(python), "-m", "pip", "uninstall", "-y", "-q", "spandrel",
                     "torchvision"])


def build_separate_env(root: Path) -> bool:
    """`.venv-upscalers` with the pinned torch + torchvision pair and spandrel."""
    python, wanted = env_python(root), digest(root)
    marker = root / UPSCALER_VENV_DIR / MARKER
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return probe(python)
    pins = env_requirements(root)
    pair = [pin for pin in pins if pin.split("==")[0] in ("torch", "torchvision")]
    print(f"Building {UPSCALER_VENV_DIR}/ for spandrel upscalers with its own "
          f"{' + '.join(pair)} (the app's torch is not changed; several GB; "
          "skip with --skip-upscaler-env)", flush=True)
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(root / UPSCALER_VENV_DIR)])
    constraint = root / UPSCALER_VENV_DIR / "pair-constraint.txt"
    constraint.write_text("\n".join(pair) + "\n")
    command = [str(python), "-m", "pip", "install", "-c", str(constraint), *pins]
    print("+", " ".join(command), flush=True)
    if subprocess.call(command) != 0 or not probe(python):
        print(f"{UPSCALER_VENV_DIR} could not be built; spandrel upscalers are unavailable "
              "(ESRGAN files still load)", flush=True)
        return False
    marker.write_text(wanted)
    return True
