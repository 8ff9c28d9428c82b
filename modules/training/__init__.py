"""Training: the demo model, textual-inversion embeddings, LoRAs and ControlNets.

`shapes.py` / `captions.py` / `checker.py` are the demo's coloured-shapes dataset and
its pixel checker; `train_vae.py`, `train_unet.py`, `train_controlnet.py`, `demo.py`
train and ship the demo model; `concept_*.py`, `train_embedding.py`, `train_lora.py`
train new concepts on a frozen model (the Train tab and `/sdapi/v1/train/embedding`);
`checkpoint.py` writes model files atomically; `evaluate.py` scores a checkpoint.
May import: every backend room it trains or runs through (nn, models, networks,
conditioning, sampling, pipeline, jobs, runtime, app flags for its command lines, imaging
for file names);
never `api/` or `webui/`.
"""
