"""The refiner: a second checkpoint takes over part-way through sampling
(modules/pipeline/refiner.py)."""

from __future__ import annotations

import pytest
import torch

from modules.app.cmd_args import parse_args
from modules.infotext import parse_infotext
from modules.pipeline.params import ParamsError, Txt2ImgParams
from modules.pipeline.refiner import ModelSwitch, SwitchTarget
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from modules.sampling.cfg import CFGDenoiser
from tests.helpers.checkpoints import finish, write_tiny_checkpoint
from tests.tiny import TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("refiner")
    folder = data / "models" / "Stable-diffusion"
    write_tiny_checkpoint(folder / "base.safetensors", TINY_SD15, seed=0)
    write_tiny_checkpoint(folder / "other.safetensors", TINY_SD15, seed=1)
    write_tiny_checkpoint(folder / "xl.safetensors", TINY_SDXL, seed=2)
    write_tiny_checkpoint(folder / "xl_refiner.safetensors", TINY_SDXL_REFINER, seed=3)
    rt = Runtime.create(parse_args(["--data-dir", str(data)]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


def generate(runtime, checkpoint="base", settings=None, **fields):
    params = Txt2ImgParams(prompt="a cat", seed=3, width=64, height=64, steps=6,
                           sampler_name="DPM++ 2M", do_not_save_samples=True,
                           override_settings={"sd_model_checkpoint": checkpoint,
                                              **(settings or {})},
                           **fields)
    return finish(txt2img(runtime, params))[0]


def pixels(result) -> bytes:
    return result.images[0].tobytes()


def test_the_refiner_takes_over_and_is_recorded(runtime):
    plain = generate(runtime)
    other_alone = generate(runtime, "other")
    refined = generate(runtime, refiner_checkpoint="other", refiner_switch_at=0.5)
    assert pixels(refined) not in (pixels(plain), pixels(other_alone))
    info = parse_infotext(refined.infotexts[0])
    assert info["Refiner switch at"] == "0.5"
    assert info["Refiner"].startswith("other")


def test_a_refiner_that_never_becomes_due_or_is_the_model_itself_changes_nothing(runtime):
    plain = generate(runtime)
    # By sigma the completed fraction never reaches 1.0 before the last call.
    assert pixels(generate(runtime, refiner_checkpoint="other",
                           refiner_switch_at=1.0)) == pixels(plain)
    assert pixels(generate(runtime, refiner_checkpoint="base",
                           refiner_switch_at=0.3)) == pixels(plain)
    assert pixels(generate(runtime, refiner_checkpoint="None",
                           refiner_switch_at=0.3)) == pixels(plain)


def test_the_switch_point_matters_and_by_steps_is_a_setting(runtime):
    early = generate(runtime, refiner_checkpoint="other", refiner_switch_at=0.2)
    late = generate(runtime, refiner_checkpoint="other", refiner_switch_at=0.8)
    assert pixels(early) != pixels(late)
    by_steps = generate(runtime, refiner_checkpoint="other", refiner_switch_at=0.5,
                        settings={"refiner_switch_by_sample_steps": True})
    fields = parse_infotext(by_steps.infotexts[0])
    assert fields["Refiner switch by sampling steps"] in (True, "True")


def test_an_sdxl_refiner_after_sdxl_base_uses_its_own_conditioning(runtime):
    base = generate(runtime, "xl")
    refined = generate(runtime, "xl", refiner_checkpoint="xl_refiner", refiner_switch_at=0.5)
    assert pixels(base) != pixels(refined)


def test_hires_refines_the_second_pass_unless_told_otherwise(runtime):
    hires = dict(enable_hr=True, denoising_strength=0.6, hr_scale=1.5, hr_upscaler="Latent",
                 refiner_checkpoint="other", refiner_switch_at=0.5)
    second = generate(runtime, **hires)
    first = generate(runtime, **hires, settings={"hires_fix_refiner_pass": "first pass"})
    both = generate(runtime, **hires, settings={"hires_fix_refiner_pass": "both passes"})
    assert len({pixels(second), pixels(first), pixels(both)}) == 3
    assert "Hires refiner" not in parse_infotext(second.infotexts[0])
    assert parse_infotext(first.infotexts[0])["Hires refiner"] == "first pass"


def test_bad_refiner_requests_name_the_field(runtime):
    with pytest.raises(ParamsError) as error:
        generate(runtime, refiner_checkpoint="missing", refiner_switch_at=0.5)
    assert error.value.field == "refiner_checkpoint"
    with pytest.raises(ParamsError) as error:
        generate(runtime, refiner_checkpoint="other")
    assert error.value.field == "refiner_switch_at"
    with pytest.raises(ParamsError) as error:
        generate(runtime, refiner_checkpoint="other", refiner_switch_at=1.5)
    assert error.value.field == "refiner_switch_at"


def _constant_denoiser(value: float):
    return lambda x, sigma, **kwargs: torch.full_like(x, value)


def test_the_guided_denoiser_swaps_model_and_conds_exactly_once_when_due():
    built = []

    def build():
        built.append(True)
        return SwitchTarget(_constant_denoiser(2.0), cfg.conds, cfg.unconds, None)

    switch = ModelSwitch(switch_at=0.5, by_steps=True, base_sigmas=torch.linspace(0.1, 10, 1000),
                         build=build)
    cfg = CFGDenoiser.__new__(CFGDenoiser)  # only the switching path is exercised here
    cfg.denoiser, cfg.conds, cfg.unconds, cfg.image_cond = _constant_denoiser(1.0), [], [], None
    cfg.switch, cfg.step, cfg.total_steps = switch, 0, 4
    seen = []
    for step in range(4):
        cfg.step = step
        if (cfg.switch is not None
                and cfg.switch.due(cfg.step, cfg.total_steps, torch.tensor([1.0]))):
            cfg._take_switch()
        seen.append(float(cfg.denoiser(torch.zeros(1), torch.tensor([1.0]))[0]))
    assert seen == [1.0, 1.0, 2.0, 2.0] and built == [True] and cfg.switch is None


def test_completed_fraction_by_sigma_follows_the_timestep_table():
    table = torch.linspace(0.03, 14.6, 1000)  # ascending, as a model's sigma table
    switch = ModelSwitch(switch_at=0.8, by_steps=False, base_sigmas=table, build=lambda: None)
    assert switch.completed(0, 10, table[-1:]) == 0.0
    assert switch.completed(0, 10, table[:1]) == pytest.approx(0.999)
    assert switch.completed(0, 10, table[199:200]) == pytest.approx(0.8)
    assert switch.due(0, 10, table[199:200]) and not switch.due(0, 10, table[200:201])
