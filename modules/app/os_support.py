"""What the launcher does differently on Windows, macOS and Linux (standard library only).

Every function takes the operating system as a parameter (`os_name`, as `os.name` spells
it: "nt" on Windows, "posix" elsewhere), with the running one as the default, so the tests
run the real code for Windows on a Linux machine.

* The venv's interpreter: `.venv/bin/python` on POSIX, `.venv\\Scripts\\python.exe` on
  Windows (and `uv.exe` beside it).
* Re-running `launch.py` inside the venv: on POSIX `os.execv` replaces this process, so
  the terminal, the exit code and Ctrl+C belong to the new interpreter. Windows has no
  real exec: its `os.execv` starts a new process and ends this one at once, so the console
  gets its prompt back while the server still runs, and Ctrl+C and the exit code are
  lost. There the venv's interpreter runs as a child that this process waits for
  (`run_child`): its exit code is ours, and Ctrl+C, which the console sends to both
  processes, stops the child while this one keeps waiting for it.
* `COMMANDLINE_ARGS`: Windows paths keep their backslashes (`split_command_line`).
* Long paths: Windows refuses paths over 260 characters unless `LongPathsEnabled` is set.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

WINDOWS = "nt"
POLL_S = 0.2  # how often the waiting parent wakes, so Ctrl+C reaches it on Windows too
WINDOWS_MAX_PATH = 260
LONG_PATHS_KEY = r"SYSTEM\CurrentControlSet\Control\FileSystem"


def is_windows(os_name: str = os.name) -> bool:
    return os_name == WINDOWS


def venv_bin_dir(venv: Path, os_name: str = os.name) -> Path:
    """Where a venv keeps its executables: `Scripts` on Windows, `bin` elsewhere."""
    return venv / ("Scripts" if is_windows(os_name) else "bin")


def executable_name(name: str, os_name: str = os.name) -> str:
    """`python` -> `python.exe` on Windows."""
    return f"{name}.exe" if is_windows(os_name) else name


def venv_executable(venv: Path, name: str, os_name: str = os.name) -> Path:
    """A program installed in `venv` (`python`, `uv`), as this OS names it."""
    return venv_bin_dir(venv, os_name) / executable_name(name, os_name)


def venv_python(venv: Path, os_name: str = os.name) -> Path:
    return venv_executable(venv, "python", os_name)


def venv_of(python: Path) -> Path:
    """The venv an interpreter from `venv_python` belongs to (`bin`/`Scripts` is its parent)."""
    return python.parent.parent


def reexec_strategy(os_name: str = os.name) -> str:
    """"exec" (replace this process) on POSIX, "child" (start and wait) on Windows."""
    return "child" if is_windows(os_name) else "exec"


def reexec(command: Sequence[str], *, os_name: str = os.name,
           execv: Callable[[str, list[str]], object] | None = None,
           run: Callable[..., int] | None = None) -> int:
    """Run `command` (an interpreter and its arguments) in place of this process.

    On POSIX this does not return. On Windows it returns the child's exit code, for
    `sys.exit`. `execv` (default `os.execv`) and `run` (default `run_child`) are looked
    up when called, for the tests.
    """
    command = [str(part) for part in command]
    if reexec_strategy(os_name) == "exec":
        (execv or os.execv)(command[0], command)
        raise OSError(f"os.execv returned for {command[0]}")  # only a test's stand-in returns
    return (run or run_child)(command, os_name=os_name)


def run_child(command: Sequence[str], *, os_name: str = os.name, poll_s: float = POLL_S,
              **popen_options) -> int:
    """Start `command` with this console, wait for it, return its exit code as ours.

    Ctrl+C: on Windows the console sends it to every process attached to it, the child
    included, so this process only keeps waiting while the child shuts down; a second
    Ctrl+C ends the child (it did not stop on the first). On POSIX a signal that reached
    this process alone (`kill -INT`) is passed on once, then the same.
    """
    process = subprocess.Popen([str(part) for part in command], **popen_options)
    interrupts = 0
    while True:
        try:
            return exit_code(process.wait(timeout=poll_s), os_name)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            interrupts += 1
            forward_interrupt(process, interrupts, os_name=os_name)


def forward_interrupt(process: subprocess.Popen, count: int, *, os_name: str = os.name) -> str:
    """What a Ctrl+C of the waiting parent does to the child; returns what was done."""
    if process.poll() is not None:
        return "none"
    if count > 1:
        process.terminate()  # TerminateProcess on Windows, SIGTERM on POSIX
        return "terminate"
    if is_windows(os_name):
        return "none"  # the console delivered CTRL_C_EVENT to the child already
    process.send_signal(signal.SIGINT)
    return "sigint"


def exit_code(returncode: int, os_name: str = os.name) -> int:
    """A child's return code as a code `sys.exit` can pass on.

    POSIX reports death by signal N as -N; shells say 128 + N. Windows codes are
    unsigned 32-bit (Ctrl+C ends a process with 0xC000013A), but `sys.exit` takes a
    C long, which is 32-bit and signed there: the same bits as a signed number.
    """
    if is_windows(os_name):
        return returncode - 2**32 if returncode >= 2**31 else returncode
    return 128 - returncode if returncode < 0 else returncode


def stop_signals(os_name: str = os.name) -> tuple[str, ...]:
    """The signals that ask this OS's processes to stop (names; SIGBREAK is Windows')."""
    return ("SIGINT", "SIGBREAK") if is_windows(os_name) else ("SIGINT", "SIGTERM")


def split_command_line(text: str, os_name: str = os.name) -> list[str]:
    """`COMMANDLINE_ARGS` as a list: POSIX shell rules, or Windows' where a backslash is a
    path separator (`--ckpt-dir "C:\\My models"`), not an escape."""
    if not is_windows(os_name):
        return shlex.split(text)
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""  # backslashes are part of Windows paths
    return list(lexer)


def long_paths_warning(root: Path, os_name: str = os.name,
                       read_setting: Callable[[], int | None] | None = None) -> str | None:
    """A note when Windows may refuse the deep paths a venv holds (torch's files are deep).

    `read_setting` returns the registry's `LongPathsEnabled` (None: unknown); the default
    reads it with `winreg`.
    """
    if not is_windows(os_name):
        return None
    enabled = (read_setting or _long_paths_enabled)()
    if enabled:
        return None
    return (f"Windows long paths are off: files deeper than {WINDOWS_MAX_PATH} characters "
            f"(some of torch's under {root}) may fail to install. Turn on 'Enable Win32 long "
            "paths' (LongPathsEnabled) or move Easel to a short folder such as C:\\easel.")


def _long_paths_enabled() -> int | None:
    try:
        import winreg
    except ImportError:  # not Windows
        return None
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, LONG_PATHS_KEY) as key:
            return int(winreg.QueryValueEx(key, "LongPathsEnabled")[0])
    except OSError:
        return 0


def is_admin(os_name: str = os.name) -> bool:
    """Root on POSIX; never assumed on Windows (`os.geteuid` does not exist there)."""
    geteuid = getattr(os, "geteuid", None)
    return not is_windows(os_name) and geteuid is not None and geteuid() == 0
