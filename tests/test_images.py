"""Saved files get A1111's numbered names, stay inside their folder and keep the infotext."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from pathlib import Path

import piexif
import pytest
from PIL import Image, PngImagePlugin

from modules.imaging.save import (
    FilenameFields,
    apply_pattern,
    dated_output_dir,
    next_sequence_number,
    read_image_info,
    read_infotext,
    save_image,
)

INFOTEXT = "a cat, café 猫 🙂\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Seed: 1"
NOW = dt.datetime(2024, 5, 1, 13, 14, 15)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (16, 8)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_same_seed_twice_never_overwrites(tmp_path: Path) -> None:
    first = save_image(solid((255, 0, 0)), tmp_path, seed=1, prompt="p", infotext=None)
    second = save_image(solid((0, 0, 255)), tmp_path, seed=1, prompt="p", infotext=None)
    assert (first.name, second.name) == ("00000-1.png", "00001-1.png")
    assert Image.open(first).getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(second).getpixel((0, 0)) == (0, 0, 255)


def test_number_is_one_above_the_highest(tmp_path: Path) -> None:
    for name in ("00041-123.png", "00007.jpg", "notes.txt", "abc-99.png", "-5.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_sequence_number(tmp_path) == 42
    path = save_image(solid((1, 2, 3)), tmp_path, seed=9, prompt="p", infotext=None)
    assert path.name == "00042-9.png"
    assert next_sequence_number(tmp_path / "missing") == 0


def test_concurrent_saves_get_distinct_files(tmp_path: Path) -> None:
    paths: list[Path] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        path = save_image(solid((index, 0, 0)), tmp_path, seed=5, prompt="p", infotext=None)
        with lock:
            paths.append(path)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 12
    assert sorted(Image.open(p).getpixel((0, 0))[0] for p in paths) == list(range(12))


def test_png_metadata_text_and_itxt_and_kept_entries(tmp_path: Path) -> None:
    image = solid((9, 9, 9))
    image.info["Software"] = "my tool"
    image.info["dpi"] = (72, 72)  # not a string: not written as text
    latin = save_image(image, tmp_path, seed=1, prompt="p", infotext="plain, café")
    unicode = save_image(image, tmp_path, seed=1, prompt="p", infotext=INFOTEXT)
    assert b"tEXtparameters" in latin.read_bytes()
    assert b"iTXtparameters" in unicode.read_bytes()
    reopened = Image.open(unicode)
    assert read_infotext(reopened) == INFOTEXT
    assert reopened.info["Software"] == "my tool"
    assert read_infotext(Image.open(latin)) == "plain, café"


@pytest.mark.parametrize("extension", ["jpg", "jpeg", "webp"])
def test_exif_user_comment_round_trip(tmp_path: Path, extension: str) -> None:
    path = save_image(solid((200, 10, 10)), tmp_path, seed=3, prompt="p", infotext=INFOTEXT,
                      extension=extension)
    assert path.suffix == f".{extension}"
    image = Image.open(path)
    assert read_infotext(image) == INFOTEXT
    comment = piexif.load(image.info["exif"])["Exif"][piexif.ExifIFD.UserComment]
    assert comment == b"UNICODE\x00" + INFOTEXT.encode("utf-16-be")
    assert not {"exif", "jfif", "dpi"} & set(read_image_info(image)[1])


def test_jpeg_of_rgba_image_and_no_metadata(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (1, 2, 3, 100))
    path = save_image(rgba, tmp_path, seed=3, prompt="p", infotext="x", extension="jpg",
                      write_metadata=False)
    assert Image.open(path).mode == "RGB" and read_infotext(Image.open(path)) is None


@pytest.mark.parametrize("pattern, prompt", [
    ("../[seed]", "p"), ("/etc/[seed]", "p"), ("[prompt_spaces]", "../../escape/me"),
    ("[prompt]", "..\\..\\win"), ("..", "p"), ("[seed]/../../x", "p"),
])
def test_names_cannot_escape_the_directory(tmp_path: Path, pattern: str, prompt: str) -> None:
    target = tmp_path / "out"
    path = save_image(solid((0, 0, 0)), target, seed=1, prompt=prompt, infotext=None,
                      pattern=pattern)
    assert path.parent == target.resolve() and path.exists()
    assert "/" not in path.name and "\\" not in path.name
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


def test_long_non_ascii_prompt_is_cut_to_255_bytes(tmp_path: Path) -> None:
    prompt = "猫" * 300
    path = save_image(solid((0, 0, 0)), tmp_path, seed=1, prompt=prompt, infotext=None,
                      pattern="[seed]-[prompt_spaces]-[prompt_spaces]-[prompt_spaces]")
    assert len(path.name.encode("utf-8")) <= 255 and path.name.startswith("00000-1-猫")
    assert path.name.endswith(".png")


def test_pattern_tags() -> None:
    fields = FilenameFields(seed=42, prompt="A cat, (sitting:1.2) on a/the mat", width=512,
                            height=768, sampler="DPM++ 2M", steps=20, cfg_scale=7.0,
                            model_name="v1-5 pruned", model_hash="6ce0161689", now=NOW)
    expand = lambda pattern: apply_pattern(pattern, fields)  # noqa: E731
    assert expand("[seed]") == "42"
    assert expand("[prompt]") == "A_cat,_(sitting_1.2)_on_a_the_mat"
    assert expand("[prompt_spaces]") == "A cat, (sitting_1.2) on a_the mat"
    assert expand("[prompt_words]") == "A cat sitting 1 2 on a the"
    assert expand("[width]x[height]-[steps]-[cfg]") == "512x768-20-7.0"
    assert expand("[sampler]|[model_name]|[model_hash]") == "DPM++_2M|v1-5_pruned|6ce0161689"
    assert expand("[date] [datetime] [datetime<%Y>] [DATE]") == (
        "2024-05-01 20240501131415 2024 2024-05-01")
    assert expand("[seed]-[unknown_tag]") == "42-[unknown_tag]"
    assert expand("[none]") == ""


def test_batch_and_generation_numbers_drop_their_prefix_when_absent() -> None:
    single = FilenameFields(seed=1, now=NOW)
    assert apply_pattern("[seed]-[batch_number]-[generation_number]", single) == "1"
    batch = FilenameFields(seed=1, batch_number=2, generation_number=6, now=NOW)
    assert apply_pattern("[seed]-[batch_number]-[generation_number]", batch) == "1-2-6"


def test_save_uses_fields_and_image_size(tmp_path: Path) -> None:
    path = save_image(solid((0, 0, 0), (24, 40)), tmp_path, seed=7, prompt="red fox",
                      infotext=None, pattern="[seed]-[prompt_words]-[width]x[height]-[sampler]",
                      fields=FilenameFields(sampler="Euler a", seed=999))
    assert path.name == "00000-7-red fox-24x40-Euler_a.png"


def test_save_txt_and_bad_extension(tmp_path: Path) -> None:
    path = save_image(solid((0, 0, 0)), tmp_path, seed=1, prompt="p", infotext=INFOTEXT,
                      save_txt=True)
    assert path.with_suffix(".txt").read_text(encoding="utf-8") == INFOTEXT
    with pytest.raises(ValueError, match="extension"):
        save_image(solid((0, 0, 0)), tmp_path, seed=1, prompt="p", infotext=None,
                   extension="bmp")
    # Without a seed (e.g. extras) the name is just the number.
    assert save_image(solid((0, 0, 0)), tmp_path, seed=None, prompt="p",
                      infotext=None).name == "00001.png"


def test_dated_output_dir() -> None:
    assert dated_output_dir("outputs", "txt2img-images", dt.date(2024, 1, 2)) == Path(
        "outputs/txt2img-images/2024-01-02")
    with pytest.raises(ValueError):
        dated_output_dir("outputs", "../x", dt.date(2024, 1, 2))


def test_read_gif_comment_and_novelai() -> None:
    buffer = io.BytesIO()
    solid((0, 0, 0)).save(buffer, format="GIF", comment=b"gif params")
    assert read_infotext(Image.open(io.BytesIO(buffer.getvalue()))) == "gif params"

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "NovelAI")
    info.add_text("Description", "1girl, smile")
    info.add_text("Comment", json.dumps({"uc": "lowres", "steps": 28, "sampler": "k_euler",
                                         "scale": 11, "seed": 123}))
    buffer = io.BytesIO()
    solid((0, 0, 0), (64, 32)).save(buffer, format="PNG", pnginfo=info)
    text, items = read_image_info(Image.open(io.BytesIO(buffer.getvalue())))
    assert text == ("1girl, smile\nNegative prompt: lowres\nSteps: 28, Sampler: Euler, "
                    "CFG scale: 11, Seed: 123, Size: 64x32, Clip skip: 2, ENSD: 31337")
    assert items["Software"] == "NovelAI"
    assert read_infotext(solid((0, 0, 0))) is None
