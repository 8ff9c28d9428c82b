"""`<hypernet:...>` through txt2img on a tiny SD1 model: isolation, multiplier 0, warnings, API."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from modules.infotext import parse_infotext
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.helpers.hypernetwork_files import a1111_hypernetwork, write_hypernetwork
from tests.test_networks_pipeline import digest, interleave
from tests.tiny import TINY_SD15

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 5, "sampler_name": "Euler",
         "do_not_save_samples": True}
# TINY_SD15: self-attention over 32 (level 0) and 64 (middle) channels; text context 32.
WIDTHS = (32, 64)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    runtime = tiny_runtime(tmp_path_factory.mktemp("data"), {"tiny": TINY_SD15})
    folder = runtime.paths.hypernetwork_dir
    options = dict(activation="relu", layer_norm=True, use_dropout=True, scale=0.3)
    write_hypernetwork(folder / "style.pt", a1111_hypernetwork(WIDTHS, seed=1, **options))
    write_hypernetwork(folder / "sub" / "other.pt", a1111_hypernetwork(WIDTHS, seed=2, **options))
    write_hypernetwork(folder / "sd1big.pt", a1111_hypernetwork((768, 320), seed=3))
    write_hypernetwork(folder / "midonly.pt", a1111_hypernetwork((64,), seed=4))
    write_hypernetwork(folder / "badshape.pt",
                       {**a1111_hypernetwork(WIDTHS), "layer_structure": [1, 3, 1]})
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}}, folder / "embedding.pt")
    (folder / "cut.pt").write_bytes((folder / "style.pt").read_bytes()[:400])
    lora = runtime.paths.lora_dir
    write_hypernetwork(lora / "outside.pt", a1111_hypernetwork(WIDTHS, seed=5))
    return runtime


@pytest.fixture(scope="module")
def plain(runtime):
    return run(runtime, "a cat")


def run(runtime, prompt, **fields):
    return finish(txt2img(runtime, Txt2ImgParams(prompt=prompt, **{**SMALL, **fields})))[0]


def image(result) -> bytes:
    return result.images[0].tobytes()


def test_hypernetwork_changes_the_image_and_multiplier_zero_is_bitwise_none(runtime, plain):
    styled = run(runtime, "a cat <hypernet:style:1>")
    zero = run(runtime, "a cat <hypernet:style:0>")
    assert image(styled) != image(plain)
    assert image(zero) == image(plain)
    assert not styled.warnings and not zero.warnings


@pytest.mark.slow
def test_multipliers_and_stacking_matter(runtime):
    results = [run(runtime, f"a cat {tags}") for tags in (
        "<hypernet:style>", "<hypernet:style:0.5>", "<hypernet:style:-1>",
        "<hypernet:style:1><hypernet:other:1>", "<hypernet:other:1><hypernet:style:1>")]
    assert len({image(r) for r in results}) == len(results)
    assert image(results[0]) == image(run(runtime, "a cat <hypernet:style:1.0>"))  # default 1


@pytest.mark.slow
def test_interleaved_jobs_equal_jobs_run_alone_and_model_is_untouched(runtime):
    model = runtime.models.get().model
    before = digest(model)
    alone_with = run(runtime, "a dog <hypernet:style:0.8>")
    alone_without = run(runtime, "a dog")
    alone_other = run(runtime, "a dog <hypernet:other:1.2>")
    jobs = [txt2img(runtime, Txt2ImgParams(prompt=p, **SMALL))
            for p in ("a dog <hypernet:style:0.8>", "a dog", "a dog <hypernet:other:1.2>")]
    together = interleave(*jobs)
    assert [image(r) for r in together] == [image(alone_with), image(alone_without),
                                           image(alone_other)]
    assert digest(model) == before


def test_infotext_keeps_the_tag_in_the_prompt_and_writes_no_legacy_keys(runtime):
    result = run(runtime, "a cat <hypernet:style:0.5>")
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Prompt"] == "a cat <hypernet:style:0.5>"
    assert "Hypernet" not in parsed and "Hypernet strength" not in parsed


WRONG = {
    "<hypernet:nope:1>": "hypernetwork 'nope' not found",
    "<hypernet:../Lora/outside:1>": "hypernetwork '../Lora/outside' not found",
    "<hypernet:style:abc>": "multiplier 'abc' is not a number",
    "<hypernet:style:inf>": "multiplier 'inf' is not a finite number",
    "<hypernet:style:1:2>": "takes a name and one multiplier only",
    "<hypernet:sd1big:1>": "hypernetwork 'sd1big' (sd1big.pt): none of its widths [320, 768] match",
    "<hypernet:badshape:1>": "hypernetwork 'badshape' (badshape.pt) could not be used and was "
                             "skipped: width 32 k MLP does not fit its layer_structure",
    "<hypernet:embedding:1>": "(embedding.pt) could not be used and was skipped: no MLPs",
    "<hypernet:cut:1>": "hypernetwork 'cut' (cut.pt) could not be used and was skipped",
}


def test_wrong_names_and_files_are_warnings_and_generation_goes_on(runtime, plain):
    result = run(runtime, "a cat " + " ".join(WRONG))
    assert len(result.images) == 1
    for expected in WRONG.values():
        assert any(expected in warning for warning in result.warnings), (expected, result.warnings)
    # Nothing usable was named, so the image is the plain one.
    assert image(result) == image(plain)


def test_file_without_the_text_width_is_used_with_a_warning(runtime, plain):
    result = run(runtime, "a cat <hypernet:midonly:1>")
    assert any("no MLP for this model's text context width 32" in w and "[64]" in w
               for w in result.warnings), result.warnings
    assert image(result) != image(plain)


def test_tags_in_the_negative_prompt_are_reported_not_applied(runtime):
    result = run(runtime, "a cat", negative_prompt="blurry <hypernet:style:1>")
    assert any("negative prompt" in w for w in result.warnings)
    assert image(result) == image(run(runtime, "a cat", negative_prompt="blurry"))


def test_api_lists_hypernetworks_and_refresh_picks_up_new_files(runtime):
    from modules.api.app import create_api_app

    client = TestClient(create_api_app(runtime))
    listed = client.get("/sdapi/v1/hypernetworks").json()
    names = [item["name"] for item in listed]
    assert names == ["badshape", "cut", "embedding", "midonly", "sd1big", "style", "other"]
    assert all(set(item) == {"name", "path"} for item in listed)
    assert listed[-1]["path"].endswith("sub/other.pt")
    write_hypernetwork(runtime.paths.hypernetwork_dir / "late.pt", a1111_hypernetwork(WIDTHS))
    assert "late" not in [i["name"] for i in client.get("/sdapi/v1/hypernetworks").json()]
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    assert "late" in [i["name"] for i in client.get("/sdapi/v1/hypernetworks").json()]
