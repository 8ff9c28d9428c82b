"""The licence files exist, pyproject points at them, and NOTICE names every shipped asset."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_licence_files_and_pyproject_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "MIT" in project["license"]
    for pattern in project["license-files"]:
        assert list(ROOT.glob(pattern)), pattern
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License")
    assert "Copyright (c) 2026 The Easel developers" in licence


def test_notice_names_every_shipped_asset_and_its_licence():
    notice = (ROOT / "NOTICE").read_text()
    for folder in sorted((ROOT / "modules" / "assets").iterdir()):
        assert f"modules/assets/{folder.name}/" in notice, folder.name
        assert (folder / "NOTICE").is_file(), folder.name
    assert "Apache License 2.0" in notice and "k-diffusion" in notice
    assert "Apache License" in (ROOT / "modules/assets/t5_tokenizer/LICENSE").read_text()
