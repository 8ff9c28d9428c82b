#!/usr/bin/env python3
"""Start Easel, or run its tests, setting up the Python environment on first use.

    python3 launch.py                 # serve the web UI on http://127.0.0.1:7860
    python3 launch.py --run-tests     # set up the test extras and run the whole test suite
    python3 launch.py --exit          # only set up the environment, then exit (A1111's flag)

On Windows the same with `py launch.py` (or `python launch.py`).

The first run creates `.venv/`, installs what is missing and re-runs itself inside it:
in place of this process on Linux and macOS, as a child whose exit code and Ctrl+C pass
through on Windows (`modules/app/os_support.py`).
This file uses the standard library only, because it runs before anything is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# Nothing may reach a model hub at run time, and Gradio must not phone home.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
}


MIN_PYTHON = (3, 11)  # pyproject.toml's requires-python: numpy, scipy and tomllib need it


def main(argv: list[str], *, os_name: str = os.name) -> int:
    """Set up, then re-run inside `.venv`; there: the tests, `--exit`'s check, or the app.

    `os_name` ("nt", "posix") picks how the re-run happens; the tests simulate Windows."""
    if sys.version_info < MIN_PYTHON:
        print(f"Easel needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; this is "
              f"{sys.version.split()[0]}.", file=sys.stderr)
        return 2
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(ROOT))
    from modules.app import bootstrap, os_support

    run_tests = "--run-tests" in argv
    if not bootstrap.inside_project_venv(ROOT) and not os.environ.get("EASEL_NO_VENV"):
        python = bootstrap.ensure_environment(
            ROOT, with_tests=run_tests, upscaler_env="--skip-upscaler-env" not in argv,
            cluster=wants_cluster(argv))
        return os_support.reexec([python, ROOT / "launch.py", *argv], os_name=os_name)
    if run_tests:
        launch_only = ("--run-tests", "--skip-upscaler-env")
        return bootstrap.run_tests(ROOT, [a for a in argv if a not in launch_only])
    if "--exit" in argv:
        return bootstrap.check_environment()
    # The entry point sits above both layers: it hands the web UI to the backend.
    from modules.app.cli import main as cli_main
    from webui import frontend

    return cli_main(argv, frontend=frontend)


def wants_cluster(argv: list[str]) -> bool:
    """`--ray` or `--ray-address`, on the command line or in COMMANDLINE_ARGS (A1111's)."""
    from modules.app.os_support import split_command_line

    given = [*split_command_line(os.environ.get("COMMANDLINE_ARGS", "")), *argv]
    return any(arg == "--ray" or arg.startswith("--ray-address") for arg in given)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
