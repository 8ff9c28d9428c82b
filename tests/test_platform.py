"""The launcher on Windows and macOS, simulated here through the real functions' `os_name`.

macOS is "posix" as Linux is (same interpreter path, `os.execv`); Windows is "nt". The
re-exec and Ctrl+C tests run real child Python processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import launch
from modules.app import bootstrap, bootstrap_upscalers, os_support

ROOT = Path(__file__).resolve().parents[1]
WINDOWS, POSIX = "nt", "posix"  # os.name's values; macOS and Linux are both "posix"
POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="simulates the console with killpg")


@pytest.mark.parametrize("os_name,expected", [
    (WINDOWS, (".venv", "Scripts", "python.exe")),
    (POSIX, (".venv", "bin", "python")),
])
def test_the_venv_interpreter_is_where_the_os_puts_it(tmp_path, os_name, expected):
    python = bootstrap.venv_python(tmp_path, os_name)
    assert python.parts[-3:] == expected
    upscalers = bootstrap_upscalers.env_python(tmp_path, os_name)
    assert upscalers.parts[-3:] == (".venv-upscalers", *expected[1:])
    uv = bootstrap.uv_path(python, os_name)
    assert uv.parts[-3:] == (".venv", expected[1], "uv.exe" if os_name == WINDOWS else "uv")
    assert os_support.venv_of(python) == tmp_path / ".venv"


def test_the_running_os_is_the_default():
    expected = ("Scripts", "python.exe") if os.name == WINDOWS else ("bin", "python")
    assert bootstrap.venv_python(ROOT).parts[-2:] == expected


def test_posix_replaces_the_process_and_windows_waits_for_a_child():
    assert os_support.reexec_strategy(POSIX) == "exec"
    assert os_support.reexec_strategy(WINDOWS) == "child"
    execs = []
    with pytest.raises(OSError, match="returned"):  # a real os.execv never returns
        os_support.reexec(["py", Path("launch.py"), "--exit"], os_name=POSIX,
                          execv=lambda path, args: execs.append((path, args)))
    assert execs == [("py", ["py", "launch.py", "--exit"])]
    code = os_support.reexec([sys.executable, "-c", "import sys; sys.exit(7)"],
                             os_name=WINDOWS)
    assert code == 7


@pytest.mark.parametrize("os_name", [WINDOWS, POSIX])
def test_launch_re_runs_itself_in_the_venv_as_the_os_needs(monkeypatch, os_name):
    monkeypatch.delenv("EASEL_NO_VENV", raising=False)
    monkeypatch.setattr(bootstrap, "inside_project_venv", lambda root: False)
    monkeypatch.setattr(bootstrap, "ensure_environment", lambda root, **kw: Path("/venv/python"))
    children, execs = [], []
    monkeypatch.setattr(os_support, "run_child",
                        lambda command, os_name: children.append(command) or 3)

    def execv(path, args):
        execs.append(args)
        raise SystemExit(0)  # what the real one amounts to: this process is gone
    monkeypatch.setattr(os, "execv", execv)
    command = [str(Path("/venv/python")), str(ROOT / "launch.py"), "--exit"]
    if os_name == WINDOWS:
        assert launch.main(["--exit"], os_name=os_name) == 3
        assert children == [command] and execs == []
    else:
        with pytest.raises(SystemExit):
            launch.main(["--exit"], os_name=os_name)
        assert execs == [command] and children == []


@pytest.mark.parametrize("os_name", [WINDOWS, POSIX])
def test_the_childs_exit_code_passes_through(os_name):
    for code in (0, 1, 7):
        command = [sys.executable, "-c", f"import sys; sys.exit({code})"]
        assert os_support.run_child(command, os_name=os_name) == code


@POSIX_ONLY
def test_a_child_killed_by_a_signal_exits_as_a_shell_says():
    command = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    assert os_support.run_child(command, os_name=POSIX) == 128 + signal.SIGTERM


def test_windows_exit_codes_fit_sys_exit():
    ctrl_c_exit = 0xC000013A  # STATUS_CONTROL_C_EXIT, unsigned as Windows reports it
    assert os_support.exit_code(ctrl_c_exit, WINDOWS) == ctrl_c_exit - 2**32
    assert os_support.exit_code(ctrl_c_exit - 2**32, WINDOWS) & 0xFFFFFFFF == ctrl_c_exit
    assert os_support.exit_code(5, WINDOWS) == 5
    assert os_support.exit_code(-2, POSIX) == 130


# The child counts the SIGINTs it gets, waits a moment for more, and exits with 40 + count.
CHILD = textwrap.dedent("""
    import signal, sys, time
    count = 0
    def on_int(signum, frame):
        global count
        count += 1
    signal.signal(signal.SIGINT, on_int)
    print("ready", flush=True)
    while count == 0:
        time.sleep(0.02)
    time.sleep(0.5)
    sys.exit(40 + count)
""")
IGNORING_CHILD = ("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                  "print('ready', flush=True); time.sleep(60)")


def start_parent(os_name: str, child: str) -> subprocess.Popen:
    """A launcher-like parent (`run_child`, then `sys.exit`), in a process group of its own
    so a signal to the group reaches parent and child as a console's Ctrl+C does."""
    # Python leaves SIGINT ignored when it starts with it ignored (a background job, as CI
    # may run the suite): a console parent has Python's own handler, so install it.
    code = (f"import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"from modules.app import os_support; "
            f"sys.exit(os_support.run_child([sys.executable, '-c', {child!r}], "
            f"os_name={os_name!r}))")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    assert parent.stdout.readline().strip() == "ready"  # the child inherited the stdout
    return parent


@POSIX_ONLY
def test_ctrl_c_in_a_windows_console_stops_the_child_once_and_its_code_passes():
    parent = start_parent(WINDOWS, CHILD)
    os.killpg(parent.pid, signal.SIGINT)  # the console's CTRL_C_EVENT: every process gets it
    assert parent.wait(timeout=30) == 41  # one interrupt: the parent did not add another


@POSIX_ONLY
def test_an_interrupt_of_the_parent_alone_is_passed_on_posix():
    parent = start_parent(POSIX, CHILD)
    parent.send_signal(signal.SIGINT)
    assert parent.wait(timeout=30) == 41


@POSIX_ONLY
@pytest.mark.parametrize("os_name", [WINDOWS, POSIX])
def test_a_second_ctrl_c_ends_a_child_that_ignored_the_first(os_name):
    parent = start_parent(os_name, IGNORING_CHILD)
    for _ in range(2):
        parent.send_signal(signal.SIGINT)
        try:
            code = parent.wait(timeout=1)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        code = parent.wait(timeout=30)
    # Terminated: a shell's 128 + N on POSIX; simulated Windows passes -N on, which Linux
    # reports modulo 256 (real Windows: TerminateProcess's code 1).
    assert code == (128 + signal.SIGTERM if os_name == POSIX else -signal.SIGTERM % 256)


def test_stop_signals_exist_on_the_os_that_names_them():
    assert os_support.stop_signals(WINDOWS) == ("SIGINT", "SIGBREAK")
    assert os_support.stop_signals(POSIX) == ("SIGINT", "SIGTERM")
    assert all(hasattr(signal, name) for name in os_support.stop_signals())


def test_commandline_args_keep_windows_backslashes():
    text = r'--ckpt-dir C:\models\sd --ui-settings-file "C:\My Files\ui.json" --xformers'
    assert os_support.split_command_line(text, WINDOWS) == [
        "--ckpt-dir", r"C:\models\sd", "--ui-settings-file", r"C:\My Files\ui.json",
        "--xformers"]
    assert os_support.split_command_line("--a 'b c' d\\ e", POSIX) == ["--a", "b c", "d e"]


def test_windows_without_long_paths_is_told_how_to_turn_them_on(tmp_path):
    assert "LongPathsEnabled" in os_support.long_paths_warning(tmp_path, WINDOWS, lambda: 0)
    assert os_support.long_paths_warning(tmp_path, WINDOWS, lambda: 1) is None
    assert os_support.long_paths_warning(tmp_path, POSIX, lambda: 0) is None


def test_windows_is_never_treated_as_root():
    assert os_support.is_admin(WINDOWS) is False


LAUNCHER_FILES = ["launch.py", "modules/app/bootstrap.py", "modules/app/bootstrap_upscalers.py",
                  "modules/upscaling/worker.py", "modules/upscaling/remote.py"]


@pytest.mark.parametrize("path", LAUNCHER_FILES)
def test_the_launcher_calls_no_posix_only_function_outside_os_support(path):
    text = (ROOT / path).read_text()
    for call in ("os.execv", "os.killpg", "os.setsid", "SIGKILL", "preexec_fn", "geteuid",
                 '"bin"'):
        assert call not in text, f"{path} calls {call}; route it through os_support"
