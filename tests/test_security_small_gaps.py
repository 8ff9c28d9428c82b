"""Gaps a second reading of the security pass found (issue #17 items 5 and 6)."""

from __future__ import annotations

import pytest
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.extensions.install import install_from_url
from modules.upscaling.extras_jobs import _open_all


def test_folder_pictures_for_extras_are_refused_from_their_header(tmp_path):
    """A 9000² one-bit PNG is small on disk; decoded in RGB it would take 243 MB."""
    bomb, good = tmp_path / "bomb.png", tmp_path / "good.png"
    Image.new("1", (9000, 9000)).save(bomb)
    Image.new("RGB", (16, 16), (10, 20, 30)).save(good)
    opened, warnings = _open_all([bomb, good])
    assert [name for name, _ in opened] == ["good"]
    assert len(warnings) == 1 and "bomb.png" in warnings[0]
    assert "max-input-image-pixels" in warnings[0]


def test_a_failed_clone_tells_the_client_nothing_about_the_target(tmp_path, caplog):
    args = parse_args(["--allow-private-extension-urls"])
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError) as failure:
        install_from_url(args, tmp_path, "http://127.0.0.1:9/x.git")
    assert str(failure.value) == "git clone failed (the reason is in the server log)"
    assert "127.0.0.1:9" in caplog.text  # the details are kept for the operator


@pytest.mark.parametrize("data_root", ["a" * 300, "[a:b:0.5]" * 50, "x\x00y"])
def test_a_data_root_the_os_refuses_is_a_named_error(tmp_path, data_root):
    """Found by tests/test_security_fuzz.py: a 300-character name raised OSError 36 (500)."""
    from types import SimpleNamespace

    from modules.errors import ParamsError
    from modules.training.concept_jobs import dataset_folder

    runtime = SimpleNamespace(args=parse_args([]), paths=SimpleNamespace(data_dir=tmp_path))
    with pytest.raises(ParamsError, match="data_root"):
        dataset_folder(runtime, data_root)
