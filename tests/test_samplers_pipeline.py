"""Every registered sampler and scheduler runs end to end through txt2img on a tiny model."""

from __future__ import annotations

import pytest

from modules.infotext import parse_infotext
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from modules.sampling.registry import SAMPLERS, SCHEDULERS
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.tiny import TINY_SD15


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    return tiny_runtime(tmp_path_factory.mktemp("data"), {"tiny": TINY_SD15})


def generate(runtime, **fields):
    fields = {"prompt": "a red [circle:square:2]", "width": 64, "height": 64, "steps": 4,
              "seed": 11, "batch_size": 2, "do_not_save_samples": True, **fields}
    params = Txt2ImgParams(**fields)
    return finish(txt2img(runtime, params))


@pytest.mark.parametrize("label", [spec.label for spec in SAMPLERS])
def test_sampler_runs_and_writes_its_infotext(runtime, label):
    result, steps = generate(runtime, sampler_name=label)
    assert len(result.images) == 2 and steps >= 1
    assert result.images[0].tobytes() != result.images[1].tobytes()
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Sampler"] == label


@pytest.mark.parametrize("scheduler", [spec.label for spec in SCHEDULERS])
def test_scheduler_runs_with_euler(runtime, scheduler):
    result, steps = generate(runtime, sampler_name="Euler", scheduler=scheduler)
    assert steps == 4
    parsed = parse_infotext(result.infotexts[0])
    expected = "Automatic" if scheduler == "Automatic" else scheduler
    assert parsed["Schedule type"] == expected


def test_legacy_combined_name_resolves(runtime):
    result, _ = generate(runtime, sampler_name="DPM++ 2M Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in result.infotexts[0]


def test_timestep_samplers_refuse_a_single_step(runtime):
    from modules.pipeline.params import ParamsError

    with pytest.raises(ParamsError, match="steps"):
        generate(runtime, sampler_name="DDIM", steps=1)
