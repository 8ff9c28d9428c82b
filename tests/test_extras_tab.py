"""The Extras tab and its backend (`modules.upscaling.extras_jobs`): modes, saving, errors."""

from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.imaging.save import png_metadata, read_image_info
from modules.pipeline.params import ParamsError
from modules.runtime import Runtime
from modules.upscaling.extras import ExtrasParams
from modules.upscaling.extras_jobs import ExtrasJob, run_extras_job
from webui.tabs import extras as extras_tab

UI_VALUES = {"mode": "single", "resize_mode": 0, "image": None, "files": None, "input_dir": "",
             "output_dir": "", "show_results": True, "upscaling_resize": 2,
             "upscaling_resize_w": 48, "upscaling_resize_h": 40, "upscaling_crop": True,
             "upscaler_1": "Lanczos", "upscaler_2": "None",
             "extras_upscaler_2_visibility": 0.0}


@pytest.fixture
def runtime(tmp_path):
    rt = Runtime.create(parse_args(["--data-dir", str(tmp_path)]))
    yield rt
    rt.jobs.stop()


def picture(color=(200, 30, 30), size=(16, 12)) -> Image.Image:
    return Image.new("RGB", size, color)


def save_with_infotext(path, text="a red circle\nSteps: 3, Seed: 5"):
    image = picture()
    image.save(path, pnginfo=png_metadata(image, text))
    return path


def test_single_image_is_upscaled_and_saved_with_info(runtime):
    source = Image.open(save_with_infotext(runtime.paths.data_dir / "in.png"))
    outcome = run_extras_job(runtime, ExtrasJob(image=source, params=ExtrasParams(
        upscaler_1="Lanczos", upscaling_resize=2.0)))
    assert [i.size for i in outcome.images] == [(32, 24)]
    assert outcome.saved_paths == [str(runtime.paths.data_dir / "outputs" / "extras-images"
                                       / "00000.png")]
    saved = Image.open(outcome.saved_paths[0])
    infotext, items = read_image_info(saved)
    assert infotext == "a red circle\nSteps: 3, Seed: 5"  # the source's parameters survive
    assert items["extras"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"


def test_scale_to_with_crop_gives_exact_size(runtime):
    outcome = run_extras_job(runtime, ExtrasJob(image=picture(), params=ExtrasParams(
        resize_mode=1, upscaling_resize_w=40, upscaling_resize_h=40, upscaler_1="Nearest")))
    assert outcome.images[0].size == (40, 40)


def test_batch_uploads_skip_unreadable_files(runtime, tmp_path):
    good = [tmp_path / f"{n}.png" for n in "ab"]
    for path in good:
        picture().save(path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    outcome = run_extras_job(runtime, ExtrasJob(mode="batch", files=[str(good[0]), str(bad),
                                                                     str(good[1])],
                                                params=ExtrasParams(upscaler_1="Lanczos")))
    assert len(outcome.images) == 2 and len(outcome.saved_paths) == 2
    assert len(outcome.warnings) == 1 and outcome.warnings[0].startswith("skipped bad.png")


def test_batch_from_directory_keeps_names_and_never_overwrites(runtime, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for name in ("one", "two"):
        save_with_infotext(source / f"{name}.png")
    (source / "notes.txt").write_text("ignored")
    target.mkdir()
    (target / "two.png").write_bytes(b"keep me")
    outcome = run_extras_job(runtime, ExtrasJob(
        mode="directory", input_dir=str(source), output_dir=str(target), show_results=False,
        params=ExtrasParams(upscaler_1="Lanczos")))
    assert outcome.images == []  # "Show result images" off
    assert sorted(p.name for p in target.iterdir()) == ["00000.png", "one.png", "two.png"]
    assert (target / "two.png").read_bytes() == b"keep me"
    assert Image.open(target / "one.png").size == (32, 24)


@pytest.mark.parametrize("job, field, reason", [
    (ExtrasJob(), "image", "upload an image"),
    (ExtrasJob(mode="batch"), "image_folder", "upload one or more"),
    (ExtrasJob(mode="directory", input_dir="/no/such/dir"), "input_dir", "is not a folder"),
    (ExtrasJob(mode="zip"), "mode", "is not one of"),
    (ExtrasJob(image=picture((1, 2, 3), (2000, 2000)), params=ExtrasParams(
        upscaler_1="Lanczos", upscaling_resize=10)), "upscaling_resize", "largest side"),
    (ExtrasJob(image=picture(), params=ExtrasParams(upscaler_1="Missing")), "upscaler_1",
     "unknown upscaler 'Missing'"),
])
def test_errors_name_the_field(runtime, job, field, reason):
    with pytest.raises(ParamsError) as caught:
        run_extras_job(runtime, job)
    assert caught.value.field == field and reason in caught.value.reason


def test_directory_mode_refused_with_hide_ui_dir_config(tmp_path):
    runtime = Runtime.create(parse_args(["--data-dir", str(tmp_path), "--hide-ui-dir-config"]))
    with pytest.raises(ParamsError, match="--hide-ui-dir-config"):
        run_extras_job(runtime, ExtrasJob(mode="directory", input_dir=str(tmp_path)))
    runtime.jobs.stop()


def test_output_dir_that_is_a_file_is_refused(runtime, tmp_path):
    (tmp_path / "in").mkdir()
    picture().save(tmp_path / "in" / "x.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParamsError, match="is a file, not a folder"):
        run_extras_job(runtime, ExtrasJob(mode="directory", input_dir=str(tmp_path / "in"),
                                          output_dir=str(tmp_path / "file")))


def test_tab_builds_with_a1111_ids_and_handler_converts_widgets(runtime):
    with gr.Blocks() as blocks:
        tab = extras_tab.build(runtime)
    ids = {c.elem_id for c in blocks.blocks.values()}
    for elem_id in ("extras_image", "extras_image_batch", "extras_batch_input_dir",
                    "extras_batch_output_dir", "extras_upscaling_resize", "extras_upscaler_1",
                    "extras_upscaler_2", "extras_upscaler_2_visibility", "extras_generate",
                    "extras_gallery", "extras_info"):
        assert elem_id in ids
    assert isinstance(tab.image, gr.Image)  # the "Send to extras" target
    images, info = extras_tab.process(runtime, {**UI_VALUES, "image": picture(),
                                                "resize_mode": 1})
    assert images[0].size == (48, 40) and "Postprocess upscale to: 48x40" in info
    with pytest.raises(gr.Error, match="Upscaler 2 visibility: 2.0 is outside"):
        extras_tab.process(runtime, {**UI_VALUES, "image": picture(),
                                     "extras_upscaler_2_visibility": 2.0})
    with pytest.raises(gr.Error, match="Source: upload an image"):
        extras_tab.process(runtime, UI_VALUES)


def test_app_has_extras_and_merger_tabs(tmp_path):
    from fastapi.testclient import TestClient

    from tests.helpers.webui_runtime import make_runtime
    from webui.app import create_app

    runtime = make_runtime(tmp_path, load=False)
    config = TestClient(create_app(runtime)).get("/config").json()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"tab_extras", "tab_modelmerger", "extras_image", "modelmerger_merge"} <= ids
    runtime.jobs.stop()
