"""The SAG and PAG built-in scripts end to end through txt2img on a tiny SD1 model:
off (or neutral) is bit-identical to no script, on changes the image and writes Forge's
infotext keys, the loaded model's parameters are unchanged, bad arguments name the field,
and on a flow model (SD3.5) both warn and do nothing."""

from __future__ import annotations

import hashlib

import pytest

from modules.app.cmd_args import parse_args as parse_cmd_args
from modules.infotext import parse_infotext
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from modules.scripts.args import ScriptArgsError, parse_args
from modules.scripts.builtin import builtin_scripts
from modules.scripts.builtin.pag import TITLE as PAG
from modules.scripts.builtin.pag import PAGArgs
from modules.scripts.builtin.sag import TITLE as SAG
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.helpers.flow_files import PIPELINE_VAE, random_parts, write_all_in_one
from tests.tiny import TINY_SD15


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    return tiny_runtime(tmp_path_factory.mktemp("data"), {"tiny": TINY_SD15})


def generate(runtime, scripts=None, **fields):
    fields = {"prompt": "a red circle", "negative_prompt": "blurry", "width": 64, "height": 64,
              "steps": 3, "seed": 7, "cfg_scale": 6.0, "sampler_name": "Euler",
              "do_not_save_samples": True, "alwayson_scripts": scripts or {}, **fields}
    result, _ = finish(txt2img(runtime, Txt2ImgParams(**fields)))
    return result


def model_hash(runtime) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(runtime.models.get().model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_registered_in_order_after_the_cfg_tools():
    titles = [script.title() for script in builtin_scripts()]
    assert titles.index(SAG) < titles.index(PAG)
    for cfg_tool in ("CFG Rescale", "DynamicThresholding (CFG-Fix) Integrated"):
        if cfg_tool in titles:
            assert titles.index(cfg_tool) < titles.index(SAG)


def test_off_and_neutral_are_bit_identical(runtime):
    plain = generate(runtime).images[0].tobytes()
    for title, args in [(PAG, {"enabled": False, "scale": 5.0}),
                        (PAG, {"enabled": True, "scale": 0.0}),
                        (SAG, {"enabled": False, "scale": 1.0}),
                        (SAG, {"enabled": True, "scale": 0.0}),
                        (SAG, {"enabled": True, "blur_sigma": 0.0})]:
        result = generate(runtime, {title: {"args": args}})
        assert result.images[0].tobytes() == plain, (title, args)
        assert "pag_" not in result.infotexts[0] and "sag_" not in result.infotexts[0]


@pytest.mark.parametrize(("title", "args", "keys"), [
    (PAG, {"enabled": True, "scale": 3.0},
     {"pag_enabled": "True", "pag_scale": "3.0"}),
    (PAG, {"enabled": True, "scale": 2.0, "adaptive_scale": 0.002, "layers": "mid, up",
           "end": 0.5},
     {"pag_scale": "2.0", "pag_adaptive_scale": "0.002", "pag_layers": "mid, up",
      "pag_end": "0.5"}),
    (SAG, {"enabled": True, "scale": 0.75, "blur_sigma": 1.0},
     {"sag_enabled": "True", "sag_scale": "0.75", "sag_blur_sigma": "1.0",
      "sag_threshold": "1.0"}),
])
def test_on_changes_the_image_writes_infotext_and_leaves_the_model(runtime, title, args, keys):
    before = model_hash(runtime)
    plain = generate(runtime)
    on = generate(runtime, {title: {"args": args}})
    after_plain = generate(runtime)
    assert on.images[0].tobytes() != plain.images[0].tobytes()
    assert after_plain.images[0].tobytes() == plain.images[0].tobytes()
    assert model_hash(runtime) == before
    parsed = parse_infotext(on.infotexts[0])
    for key, value in keys.items():
        assert str(parsed[key]) == value, key
    assert on.warnings == plain.warnings
    # Hires fix runs the hooks again for its own pass.
    hires = generate(runtime, {title: {"args": args}}, enable_hr=True, hr_scale=1.5,
                     hr_second_pass_steps=2, denoising_strength=0.5)
    assert hires.images[0].size == (96, 96)


def test_cfg_scale_one_works(runtime):
    plain = generate(runtime, cfg_scale=1.0)
    for title, args in [(PAG, {"enabled": True}), (SAG, {"enabled": True, "scale": 1.0})]:
        on = generate(runtime, {title: {"args": args}}, cfg_scale=1.0)
        assert on.images[0].tobytes() != plain.images[0].tobytes(), title


def test_both_on_with_a_batch_and_composable_prompts(runtime):
    fields = dict(prompt="a red circle AND a blue square:0.5", batch_size=2,
                  negative_prompt="blurry, " * 60)  # over 77 tokens: its own U-Net call
    plain = generate(runtime, **fields)
    both = generate(runtime, {PAG: {"args": {"enabled": True, "layers": "mid,up"}},
                              SAG: {"args": {"enabled": True}}}, **fields)
    assert len(both.images) == 2 and both.warnings == plain.warnings
    for on, off in zip(both.images, plain.images):
        assert on.tobytes() != off.tobytes()
    parsed = parse_infotext(both.infotexts[1])
    assert parsed["sag_enabled"] is True or str(parsed["sag_enabled"]) == "True"
    assert str(parsed["pag_layers"]) == "mid,up"


def test_bad_arguments_name_the_field(runtime):
    with pytest.raises(ScriptArgsError, match="layers"):
        parse_args(PAGArgs, {"layers": "mid.*"}, script=PAG)
    with pytest.raises(ScriptArgsError, match="layers"):
        parse_args(PAGArgs, {"layers": " , "}, script=PAG)
    with pytest.raises(ScriptArgsError, match="scale"):
        parse_args(PAGArgs, {"scale": -1}, script=PAG)
    # A valid form naming no block of this model: only the job knows the model, so it is
    # a warning, no infotext key, and the plain image.
    plain = generate(runtime)
    missing = generate(runtime, {PAG: {"args": {"enabled": True, "layers": "up_blocks.7"}}})
    assert missing.images[0].tobytes() == plain.images[0].tobytes()
    assert "pag_" not in missing.infotexts[0]
    assert missing.warnings == plain.warnings + [
        "PAG: layers: 'up_blocks.7' names no self-attention layer of this SD 1.x U-Net; "
        "not applied"]


@pytest.fixture(scope="module")
def flow_runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("flow-data")
    write_all_in_one(data / "models" / "Stable-diffusion" / "sd35-tiny.safetensors",
                     random_parts("sd3", vae=PIPELINE_VAE))
    rt = Runtime.create(parse_cmd_args(["--data-dir", str(data), "--nowebui"]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


def test_flow_model_warns_and_is_untouched(flow_runtime):
    plain = generate(flow_runtime)
    on = generate(flow_runtime, {PAG: {"args": {"enabled": True}},
                                 SAG: {"args": {"enabled": True}}})
    assert on.images[0].tobytes() == plain.images[0].tobytes()
    assert "pag_" not in on.infotexts[0] and "sag_" not in on.infotexts[0]
    assert any(w.startswith("PAG: applies to U-Net models") for w in on.warnings)
    assert any(w.startswith("SAG: applies to U-Net models") for w in on.warnings)
