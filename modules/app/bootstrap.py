"""First-run setup: a project virtual environment with the right torch kept or installed.

Standard library only: this runs before any dependency exists.

Torch policy, in order:
1. A torch already importable by the interpreter that started us (Colab, a CUDA
   desktop) is kept: the venv sees it through `--system-site-packages`.
2. Otherwise, if pip's find-links folder holds a local torch wheel (our CPU
   machines), that exact build is installed, never a multi-GB download.
3. Otherwise pip's build for the platform of the version pinned in pyproject.toml
   (`[tool.easel].torch`) is installed.
Every later install is constrained to the torch version found, so no package can
silently replace it.

What is installed is pyproject.toml's list (`modules/app/pyproject.py`):
`[project].dependencies`, plus the `test` extra for `--run-tests` and the `cluster` extra
(Ray Serve) for `--ray` and for the tests, which start a local Ray instance, and the
`openvino` extra where torch sees no GPU (and for the tests); torch is left out of it (the
policy above decides torch).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from modules.app import os_support, pyproject

VENV_DIR = ".venv"
MARKER = ".easel-installed"


def inside_project_venv(root: Path) -> bool:
    return Path(sys.prefix).resolve() == (root / VENV_DIR).resolve()


def venv_python(root: Path, os_name: str = os.name) -> Path:
    """`.venv/bin/python`, or `.venv\\Scripts\\python.exe` on Windows."""
    return os_support.venv_python(root / VENV_DIR, os_name)


def ensure_environment(root: Path, *, with_tests: bool, upscaler_env: bool = True,
                       cluster: bool = False) -> Path:
    """Create and fill `.venv` if needed, then set up spandrel; return its interpreter.

    `upscaler_env` False (`--skip-upscaler-env`) never builds `.venv-upscalers`; `cluster`
    (`--ray`) adds the `cluster` extra.
    """
    python = venv_python(root)
    if not python.exists():
        _create_venv(root)
    wanted = _requirements_digest(root, with_tests, cluster)
    marker = root / VENV_DIR / MARKER
    installed = marker.read_text().split() if marker.exists() else []
    if wanted not in installed and _full_digest(root) not in installed:
        _install(root, python, with_tests=with_tests, cluster=cluster)
        installed.append(wanted)
        marker.write_text("\n".join(installed))
    _ensure_upscalers(root, python, marker, build_env=upscaler_env)
    return python


def _ensure_upscalers(root: Path, python: Path, marker: Path, *, build_env: bool) -> None:
    """spandrel in the app's venv or in `.venv-upscalers` (`bootstrap_upscalers`), once
    per requirements change; a run that skipped the separate env is retried without
    the flag."""
    from modules.app import bootstrap_upscalers as up

    step = up.digest(root)
    installed = marker.read_text().split()
    done = [line for line in installed if line.startswith(step)]
    if done and (not build_env or not done[-1].endswith("-none")):
        return
    where = up.ensure(root, python, build_env=build_env,
                      install=lambda args: _install_into_app(root, python, args))
    kept = [line for line in installed if not line.startswith(step)]
    marker.write_text("\n".join([*kept, f"{step}-{where}"]))


def check_environment() -> int:
    """`launch.py --exit`: the environment is set up; prove the app's imports work, stop."""
    import importlib

    for name in ("torch", "gradio", "fastapi", "transformers", "safetensors", "PIL"):
        importlib.import_module(name)
    torch = sys.modules["torch"]
    print(f"Easel is set up: Python {sys.version.split()[0]}, torch {torch.__version__}",
          flush=True)
    return 0


def run_tests(root: Path, pytest_args: list[str]) -> int:
    """Run the whole suite (slow and browser tests included) from the project root."""
    ensure_chromium()
    env = dict(os.environ, PYTHONPATH=str(root))
    command = [sys.executable, "-m", "pytest", *pytest_args]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command, cwd=root, env=env)


def ensure_chromium() -> None:
    """The browser tests drive Debian's `chromium`; install it when we can (root + apt).

    Never `playwright install`: that downloads a browser build from the network.
    """
    if shutil.which("chromium"):
        return
    if not os_support.is_admin() or not shutil.which("apt-get"):  # never on Windows
        print("chromium not found and cannot be installed here; browser tests will fail",
              flush=True)
        return
    command = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
               "apt-get install -y -qq chromium")
    print("+", command, flush=True)
    if subprocess.call(command, shell=True) != 0:
        print("installing chromium failed; browser tests will fail", flush=True)


def _create_venv(root: Path) -> None:
    warning = os_support.long_paths_warning(root)
    if warning:
        print(warning, flush=True)
    keep_system_torch = _system_has_torch()
    args = [sys.executable, "-m", "venv", str(root / VENV_DIR)]
    if keep_system_torch:
        args.insert(3, "--system-site-packages")
    print(f"Creating {VENV_DIR} (keeping the installed torch: {keep_system_torch})", flush=True)
    subprocess.check_call(args)


def _system_has_torch() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, check=False
    )
    return probe.returncode == 0


def requirements(root: Path, with_tests: bool, cluster: bool = False,
                 cpu_only: bool = False) -> list[str]:
    """What `_install` gives `.venv` besides torch: pyproject's dependencies (+ `test`,
    `cluster` and `openvino` for the tests, + `cluster` for `--ray`, + `openvino` where
    the U-Net runs on the CPU, whose default backend it is)."""
    extras = ["test", "cluster", "openvino"] if with_tests else ["cluster"] if cluster else []
    if cpu_only and "openvino" not in extras:
        extras.append("openvino")
    specs = pyproject.dependencies(root, *extras)
    return [spec for spec in specs if pyproject.requirement_name(spec) != "torch"]


def _requirements_digest(root: Path, with_tests: bool, cluster: bool = False) -> str:
    # The openvino extra is decided at install time (`_cpu_only`); its pin is part of the
    # digest so that a new pin, or a venv made before it existed, is installed again.
    listed = "\n".join(requirements(root, with_tests, cluster)
                       + pyproject.dependencies(root, "openvino")).encode()
    kind = "test-" if with_tests else "cluster-" if cluster else "app-"
    return kind + hashlib.sha256(listed).hexdigest()[:16]


def _full_digest(root: Path) -> str:
    """A venv set up for the tests also serves the app, with or without `--ray`."""
    return _requirements_digest(root, True)


def _local_torch_wheel() -> str | None:
    """The version of a torch wheel in pip's find-links folder, if there is one."""
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        path = Path(folder)
        if not path.is_dir():
            continue
        for wheel in sorted(path.glob("torch-*.whl")):
            match = re.match(r"torch-([^-]+)-", wheel.name)
            if match:
                return match.group(1).split("+")[0]
    return None


def _installed_torch(python: Path) -> str | None:
    probe = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__.split('+')[0])"],
        capture_output=True, text=True, check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def _install(root: Path, python: Path, *, with_tests: bool, cluster: bool = False) -> None:
    torch_version = _installed_torch(python)
    local_wheel = _local_torch_wheel()
    if torch_version is None:
        spec = f"torch=={local_wheel}" if local_wheel else pyproject.easel(root)["torch"]
        _pip(python, [spec], constraint=None)
        torch_version = _installed_torch(python)
        if torch_version is None:
            raise SystemExit("torch failed to install; see the pip output above")
    constraint = root / VENV_DIR / "torch-constraint.txt"
    constraint.write_text(f"torch=={torch_version}\n")
    _pip(python, requirements(root, with_tests, cluster, cpu_only=_cpu_only(python)),
         constraint=constraint, fast=local_wheel is not None)
    if _installed_torch(python) != torch_version:
        raise SystemExit(f"an install replaced torch {torch_version}; refusing to continue")


def _cpu_only(python: Path) -> bool:
    """Whether torch sees no GPU here (no CUDA, no Apple MPS): then the U-Net runs on the
    CPU, and OpenVINO, the CPU's default backend (`--cpu-backend`), is installed."""
    probe = subprocess.run(
        [str(python), "-c", "import torch; print(torch.cuda.is_available() or "
         "torch.backends.mps.is_available())"], capture_output=True, text=True, check=False)
    return probe.stdout.strip() == "False"


def _install_into_app(root: Path, python: Path, args: list[str]) -> None:
    """Install into `.venv` under its torch constraint; refuse a changed torch."""
    torch_version = _installed_torch(python)
    constraint = root / VENV_DIR / "torch-constraint.txt"
    constraint.write_text(f"torch=={torch_version}\n")
    _pip(python, args, constraint=constraint, fast=_local_torch_wheel() is not None)
    if _installed_torch(python) != torch_version:
        raise SystemExit(f"an install replaced torch {torch_version}; refusing to continue")


def _pip(python: Path, args: list[str], *, constraint: Path | None, fast: bool = False) -> None:
    """Install with uv when local wheels make it safe (it ignores pip's config), else pip."""
    extra = ["-c", str(constraint)] if constraint else []
    if fast and _ensure_uv(python):
        env = dict(os.environ, VIRTUAL_ENV=str(os_support.venv_of(python)),
                   UV_FIND_LINKS=os.environ.get("PIP_FIND_LINKS", ""))
        uv = uv_path(python)
        command = [str(uv), "pip", "install", "--python", str(python), *extra, *args]
        print("+", " ".join(command), flush=True)
        if subprocess.call(command, env=env) == 0:
            return
        print("uv failed; falling back to pip", flush=True)
    command = [str(python), "-m", "pip", "install", *extra, *args]
    print("+", " ".join(command), flush=True)
    subprocess.check_call(command)


def uv_path(python: Path, os_name: str = os.name) -> Path:
    """uv beside the venv's interpreter (`uv.exe` in `Scripts` on Windows)."""
    return os_support.venv_executable(os_support.venv_of(python), "uv", os_name)


def _ensure_uv(python: Path) -> bool:
    if uv_path(python).exists():
        return True
    result = subprocess.call([str(python), "-m", "pip", "install", "-q", "uv"])
    return result == 0 and shutil.which("uv", path=str(python.parent)) is not None
