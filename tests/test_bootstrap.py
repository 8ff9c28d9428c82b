"""launch.py's first-run setup installs exactly pyproject.toml's dependency lists."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from modules.app import bootstrap, bootstrap_upscalers, pyproject

ROOT = Path(__file__).resolve().parents[1]


def toml() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def without_torch(specs: list[str]) -> list[str]:
    return [spec for spec in specs if not spec.startswith("torch>") and spec != "torch"]


@pytest.fixture
def fake_venv(tmp_path, monkeypatch):
    """A project copy whose pip calls are recorded, with torch 2.13.0 'installed'."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / bootstrap.VENV_DIR).mkdir()
    calls = []
    monkeypatch.setattr(bootstrap, "_pip", lambda python, args, **kw: calls.append((args, kw)))
    monkeypatch.setattr(bootstrap, "_installed_torch", lambda python: "2.13.0")
    monkeypatch.setattr(bootstrap, "_local_torch_wheel", lambda: None)
    monkeypatch.setattr(bootstrap, "_cpu_only", lambda python: False)
    return tmp_path, calls


@pytest.mark.parametrize("cpu_only", [False, True])
@pytest.mark.parametrize("with_tests,cluster", [(False, False), (True, False), (False, True)])
def test_the_installed_list_is_pyprojects(fake_venv, monkeypatch, with_tests, cluster, cpu_only):
    root, calls = fake_venv
    monkeypatch.setattr(bootstrap, "_cpu_only", lambda python: cpu_only)
    project = toml()["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + (extras["test"] if with_tests else []) + (
        extras["cluster"] if with_tests or cluster else []) + (  # the suite starts Ray too
        extras["openvino"] if with_tests or cpu_only else [])  # the CPU's default backend
    bootstrap._install(root, root / "python", with_tests=with_tests, cluster=cluster)
    [(args, kw)] = calls
    assert args == without_torch(wanted) == bootstrap.requirements(ROOT, with_tests, cluster,
                                                                   cpu_only=cpu_only)
    assert any(spec.startswith("ray[serve]==") for spec in extras["cluster"])  # pinned
    assert "torch>=2.1" in project["dependencies"]  # the floor; the torch policy decides
    assert (root / bootstrap.VENV_DIR / "torch-constraint.txt").read_text() == "torch==2.13.0\n"
    assert kw["constraint"] == root / bootstrap.VENV_DIR / "torch-constraint.txt"


def test_upscaler_lists_are_pyprojects():
    data = toml()
    assert bootstrap_upscalers.app_requirements(ROOT) == (
        data["project"]["optional-dependencies"]["upscalers"])
    pins = bootstrap_upscalers.env_requirements(ROOT)
    assert pins == data["tool"]["easel"]["upscaler-env"]
    assert all("==" in pin for pin in pins)  # the separate environment is pinned exactly
    assert {pyproject.requirement_name(pin) for pin in pins} >= {"torch", "torchvision"}


def test_without_torch_the_pyproject_pin_is_installed(fake_venv, monkeypatch):
    root, calls = fake_venv
    versions = iter([None, "2.13.0", "2.13.0"])
    monkeypatch.setattr(bootstrap, "_installed_torch", lambda python: next(versions))
    bootstrap._install(root, root / "python", with_tests=False)
    assert calls[0] == ([toml()["tool"]["easel"]["torch"]], {"constraint": None})
    assert toml()["tool"]["easel"]["torch"] == "torch==2.13.0"


def test_a_local_torch_wheel_wins_over_the_pin(fake_venv, monkeypatch):
    root, calls = fake_venv
    versions = iter([None, "2.9.0", "2.9.0"])
    monkeypatch.setattr(bootstrap, "_installed_torch", lambda python: next(versions))
    monkeypatch.setattr(bootstrap, "_local_torch_wheel", lambda: "2.9.0")
    bootstrap._install(root, root / "python", with_tests=False)
    assert calls[0][0] == ["torch==2.9.0"] and calls[1][1]["fast"] is True


def test_an_install_that_replaces_torch_is_refused(fake_venv, monkeypatch):
    root, _ = fake_venv
    versions = iter(["2.13.0", "2.14.1"])
    monkeypatch.setattr(bootstrap, "_installed_torch", lambda python: next(versions))
    with pytest.raises(SystemExit, match="replaced torch 2.13.0"):
        bootstrap._install(root, root / "python", with_tests=False)


def test_the_digest_follows_the_lists_not_the_rest_of_the_file(tmp_path):
    text = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text)
    app, full = (bootstrap._requirements_digest(tmp_path, t) for t in (False, True))
    upscalers = bootstrap_upscalers.digest(tmp_path)
    assert app.startswith("app-") and full.startswith("test-") and app[4:] != full[5:]

    (tmp_path / "pyproject.toml").write_text(text + "\n[tool.other]\nx = 1  # unrelated\n")
    assert bootstrap._requirements_digest(tmp_path, False) == app
    assert bootstrap_upscalers.digest(tmp_path) == upscalers

    (tmp_path / "pyproject.toml").write_text(text.replace('"tqdm",', '"tqdm",\n    "rich",'))
    assert bootstrap._requirements_digest(tmp_path, False) != app
    assert bootstrap._requirements_digest(tmp_path, True) != full

    (tmp_path / "pyproject.toml").write_text(text.replace("spandrel==0.4.2", "spandrel==0.4.3"))
    assert bootstrap_upscalers.digest(tmp_path) != upscalers


def test_a_changed_list_reinstalls_once(tmp_path, monkeypatch):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = bootstrap.venv_python(tmp_path)
    python.parent.mkdir(parents=True)
    python.touch()
    installs = []
    monkeypatch.setattr(bootstrap, "_install", lambda root, py, **kw: installs.append(kw))
    monkeypatch.setattr(bootstrap, "_ensure_upscalers", lambda *a, **kw: None)
    for _ in range(2):
        bootstrap.ensure_environment(tmp_path, with_tests=False)
    assert len(installs) == 1
    text = (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text.replace("einops==0.8.2", "einops==0.8.3"))
    bootstrap.ensure_environment(tmp_path, with_tests=False)
    assert len(installs) == 2
    bootstrap.ensure_environment(tmp_path, with_tests=False, cluster=True)  # first --ray
    assert installs[-1] == {"with_tests": False, "cluster": True} and len(installs) == 3


def test_the_separate_env_installs_its_pins_under_the_pair(tmp_path, monkeypatch):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = bootstrap_upscalers.env_python(tmp_path)
    python.parent.mkdir(parents=True)
    python.touch()
    commands = []
    monkeypatch.setattr(subprocess, "call", lambda command: commands.append(command) or 0)
    monkeypatch.setattr(bootstrap_upscalers, "probe", lambda python: True)
    assert bootstrap_upscalers.build_separate_env(tmp_path)
    pins = toml()["tool"]["easel"]["upscaler-env"]
    [command] = commands
    assert command[-len(pins):] == pins
    constraint = Path(command[command.index("-c") + 1]).read_text().split()
    assert constraint == [pin for pin in pins if pin.split("==")[0] in ("torch", "torchvision")]


def test_the_requirements_folder_is_gone():
    assert not (ROOT / "requirements").exists()


def test_the_bootstrap_imports_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); "
            "import modules.app.bootstrap, modules.app.bootstrap_upscalers; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'modules'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_requirement_names():
    assert pyproject.requirement_name("huggingface_hub==2.4.0") == "huggingface-hub"
    assert pyproject.requirement_name("torch>=2.1") == "torch"
    assert pyproject.requirement_name("Pillow") == "pillow"


def test_the_extras_print_for_a_hand_install():
    run = [sys.executable, "-m", "modules.app.pyproject"]
    out = subprocess.run([*run, "test"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == toml()["project"]["optional-dependencies"]["test"]
    wrong = subprocess.run([*run, "nope"], cwd=ROOT, capture_output=True, text=True)
    assert wrong.returncode == 2 and "test" in wrong.stderr
