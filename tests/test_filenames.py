"""File names made from user input are valid on Windows too: device names, reserved
characters, trailing dots and spaces, length; in image saving, embeddings and merges."""

from __future__ import annotations

import pytest
from PIL import Image

from modules.errors import ParamsError
from modules.imaging import filenames
from modules.imaging.save import save_image
from modules.models.merge import MergeParams, output_stem
from modules.training.embedding_files import clean_name, embedding_path

RESERVED = ["CON", "con", "Prn", "AUX", "NUL", "nul.txt", "COM1", "com9.tar.gz", "LPT1",
            "lpt9", "COM0", "CONIN$", "conout$", "aux .png", "COM¹"]
NOT_RESERVED = ["CONSOLE", "con_", "xcon", "COM10", "LPT", "nullify.txt", "com", "a.con"]


@pytest.mark.parametrize("name", RESERVED)
def test_windows_device_names_are_recognised_in_any_case_and_with_extensions(name):
    assert filenames.is_reserved_name(name)
    safe = filenames.safe_name(name)
    assert not filenames.is_reserved_name(safe) and safe.startswith("_")


@pytest.mark.parametrize("name", NOT_RESERVED)
def test_names_that_only_look_like_device_names_are_kept(name):
    assert not filenames.is_reserved_name(name)
    assert filenames.safe_name(name) == name


@pytest.mark.parametrize("name, expected", [
    ('a<b>c:d"e/f\\g|h?i*j', "a_b_c_d_e_f_g_h_i_j"),
    ("tab\there\nnew\x7fline\x00", "tabherenewline"),
    ("trailing dots...", "trailing dots"),
    ("trailing spaces   ", "trailing spaces"),
    ("  leading", "leading"),
    ("dots. . .", "dots"),
    ("..", "unnamed"),
    ("", "unnamed"),
    ("???", "___"),
])
def test_reserved_characters_control_characters_and_trailing_dots(name, expected):
    assert filenames.safe_name(name) == expected


def test_a_suffix_is_kept_whole_and_the_name_fits_255_bytes():
    name = filenames.safe_name("猫" * 200 + ".", suffix=".safetensors")
    assert name.endswith("猫.safetensors") and len(name.encode("utf-8")) <= 255
    assert filenames.safe_name("nul", suffix=".safetensors") == "_nul.safetensors"
    assert filenames.safe_name("model.", suffix=".ckpt") == "model.ckpt"


def test_saved_images_have_windows_safe_names(tmp_path):
    image = Image.new("RGB", (8, 8))
    for prompt in ("CON", 'a:b*c?"d"<e>|f', "ends with a dot."):
        path = save_image(image, tmp_path, seed=1, prompt=prompt, infotext=None,
                          pattern="[prompt_spaces]")
        assert path.name == filenames.safe_name(path.name)  # nothing left to change
        assert not filenames.is_reserved_name(path.name)  # "00000-CON.png" is a file
        assert not any(ch in path.stem for ch in filenames.WINDOWS_INVALID_CHARS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000-CON.png", "00001-a_b_c__d__e__f.png", "00002-ends with a dot.png"]


@pytest.mark.parametrize("name", ["con", "NUL", "Com1", "lpt9"])
def test_an_embedding_cannot_take_a_device_name(tmp_path, name):
    with pytest.raises(ParamsError, match="device name on Windows") as caught:
        embedding_path(tmp_path, name)
    assert caught.value.field == "name"
    assert clean_name("console") == "console"


@pytest.mark.parametrize("custom, stem", [
    ("CON", "_CON"), ("aux.safetensors", "_aux"), ("merged. ", "merged"), ("ok", "ok"),
])
def test_merged_checkpoints_get_windows_safe_names(custom, stem):
    params = MergeParams(primary_model_name="a", secondary_model_name="b", custom_name=custom)
    assert output_stem(params, [], {}) == stem
