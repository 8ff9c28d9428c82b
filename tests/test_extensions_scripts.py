"""Built-in selectable scripts: X/Y/Z plot, Prompt matrix, Prompts from file; script listings."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from modules.api.app import create_api_app
from modules.imaging.grid_labels import band_height
from modules.infotext import parse_infotext
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.scripts.args import ScriptArgsError, parse_args
from modules.scripts.builtin.prompt_matrix import PromptMatrix, combinations
from modules.scripts.builtin.xyz_axes import find_axis, parse_values
from tests.helpers.api_runtime import SMALL, decode_png, make_runtime
from tests.helpers.checkpoints import finish


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("scripts"))
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def run(runtime, **fields):
    return finish(txt2img(runtime, Txt2ImgParams(**{**SMALL, **fields})))[0]


def test_xyz_sampler_by_steps_grid_and_cell_infotexts(runtime):
    result = run(runtime, prompt="a cat", seed=11, script_name="X/Y/Z plot", script_args={
        "x_type": "Sampler", "x_values": "Euler, Euler a, DDIM",
        "y_type": "Steps", "y_values": "2-3", "include_lone_images": True})
    grid, cells = result.images[0], result.images[1:]
    assert len(cells) == 6 and result.extra["grid_included"]
    left = max(64 // 2, 96)
    top = band_height(["Sampler: Euler", "Sampler: Euler a", "Sampler: DDIM"], 64)
    assert top > 0 and grid.size == (3 * 64 + left, 2 * 64 + top)
    parsed = [parse_infotext(text) for text in result.infotexts[1:]]
    assert [p["Sampler"] for p in parsed] == ["Euler", "Euler a", "DDIM"] * 2
    assert [p["Steps"] for p in parsed] == ["2"] * 3 + ["3"] * 3
    assert {p["Seed"] for p in parsed} == {"11"}
    assert grid.crop((left, top, left + 64, top + 64)).tobytes() == cells[0].tobytes()
    grid_info = parse_infotext(result.infotexts[0])
    assert grid_info["Script"] == "X/Y/Z plot" and grid_info["X Type"] == "Sampler"
    assert grid_info["X Values"] == "Euler, Euler a, DDIM" and grid_info["Y Values"] == "2, 3"


def test_xyz_bad_values_fail_before_running(runtime):
    with pytest.raises(ValueError, match="Sampler value 'Nope'"):
        run(runtime, script_name="X/Y/Z plot",
            script_args={"x_type": "Sampler", "x_values": "Euler, Nope"})
    with pytest.raises(ScriptArgsError, match="X/Y/Z plot.colour"):
        run(runtime, script_name="X/Y/Z plot", script_args={"colour": 1})


def test_axis_value_ranges():
    assert parse_values(find_axis("Steps"), "1-5") == [1, 2, 3, 4, 5]
    assert parse_values(find_axis("Steps"), "1-9 (+4), 20") == [1, 5, 9, 20]
    assert parse_values(find_axis("CFG Scale"), "1-2 [3]") == [1.0, 1.5, 2.0]
    assert parse_values(find_axis(5), "7") == [7.0]  # A1111 clients send indices
    with pytest.raises(ValueError, match="not an integer"):
        parse_values(find_axis("Seed"), "abc")


def test_prompt_matrix_count_and_prompts(runtime):
    assert combinations("a|b|c", at_start=False, delimiter=", ")[1] == [
        "a", "a, b", "a, c", "a, b, c"]
    result = run(runtime, prompt="a cat|red|big", seed=4, script_name="Prompt matrix")
    assert len(result.images) == 1 + 4  # the grid, then every combination
    assert result.prompts[1:] == ["a cat", "a cat, red", "a cat, big", "a cat, red, big"]
    assert set(result.seeds[1:]) == {4}
    assert parse_infotext(result.infotexts[0])["Script"] == "Prompt matrix"
    grid = result.images[0]
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # 2x2 cells plus labels


def test_prompts_from_file(runtime):
    result = run(runtime, prompt="", seed=9, script_name="Prompts from file or textbox",
                 script_args=[True, False, "start", "one\n\n--prompt \"two, three\" --steps 1"])
    assert result.prompts == ["one", "two, three"] and result.seeds == [9, 10]
    with pytest.raises(ValueError, match="line 1: unknown option --colour"):
        run(runtime, script_name="Prompts from file or textbox",
            script_args={"prompt_txt": "--colour red"})


def test_scripts_and_script_info_routes(client):
    scripts = client.get("/sdapi/v1/scripts").json()
    for tab in ("txt2img", "img2img"):
        assert {"prompt matrix", "prompts from file or textbox", "x/y/z plot"} <= set(scripts[tab])
    info = {(item["name"], item["is_img2img"]): item for item in
            client.get("/sdapi/v1/script-info").json()}
    xyz = info[("x/y/z plot", False)]
    assert xyz["is_alwayson"] is False
    assert xyz["args"][1] == {"label": "X values", "value": "", "minimum": None,
                              "maximum": None, "step": None, "choices": None}
    matrix = info[("prompt matrix", False)]["args"]
    assert matrix[2]["choices"] == ["positive", "negative"]


def test_api_script_name_with_list_args_returns_its_grid_first(client):
    body = {**SMALL, "prompt": "a dog", "seed": 3, "script_name": "x/y/z plot",
            "script_args": [4, "1, 2"]}  # X type by index (4 = Steps), X values
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    info = json.loads(payload["info"])
    assert len(payload["images"]) == 1 and info["index_of_first_image"] == 1
    assert "X Type: Steps" in info["infotexts"][0]
    assert decode_png(payload["images"][0]).width == 2 * 64
    bad = client.post("/sdapi/v1/txt2img", json={**body, "script_args": [4, "1", "x"]})
    assert bad.status_code == 422 and "x/y/z plot.x_values_dropdown" in bad.text.lower()
    bad = client.post("/sdapi/v1/txt2img", json={**body, "script_args": [7, "Euler, Nope"]})
    assert bad.status_code == 422 and "Sampler value 'Nope'" in bad.text


def test_args_parsing_errors_name_the_field():
    with pytest.raises(ScriptArgsError, match="Prompt matrix.margin_size: expected an integer"):
        parse_args(PromptMatrix.Args, {"margin_size": "big"}, script="Prompt matrix")
    with pytest.raises(ScriptArgsError, match="takes 5"):
        parse_args(PromptMatrix.Args, [False] * 6, script="Prompt matrix")
