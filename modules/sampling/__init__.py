"""Sampling: samplers, schedules, the denoiser, CFG, and A1111's seeds and noise.

Samplers are generator functions with k-diffusion's one signature
(`samplers_*.py`), schedules are plain functions (`schedules.py`), `denoiser.py` turns
eps / v-prediction U-Net output into D(x, sigma), `flow.py` does the same for
rectified-flow velocity models (SD3, Flux.1) and holds their shifted schedules,
`renoise.py` adds samplers' fresh noise for either kind of model (`flow=True`), `cfg.py`
is classifier-free guidance over scheduled conds, `registry.py` maps A1111's sampler and
scheduler labels to them; `seeds.py` / `noise.py` / `rng_philox.py` make A1111-identical
noise (CPU, GPU and NV sources, variation seeds, ENSD).
May import: nn (for model types) and `conditioning.conds`; never `pipeline/`, `api/`
or `webui/`.
"""
