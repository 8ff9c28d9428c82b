"""Interrogation: from a picture to a prompt (A1111's "Interrogate CLIP" / "DeepBooru").

The model files are found and loaded by `modules/models/interrogate_files.py` (BLIP and
CLIP as transformers folders under `models/BLIP/` and `models/clip/`, DeepBooru's
`model-resnet_custom_v3.pt` under `models/torch_deepdanbooru/`; never a download).
Here: `clip_interrogator.py` is the BLIP caption plus the CLIP-ranked artists / flavors /
mediums / movements (lists shipped in `modules/assets/interrogate/`), `tagger.py` turns
DeepBooru's tag probabilities into A1111's tag text, and `service.py` holds the loaded
models per runtime and is the one entry point the API, the UI and the Loopback script
call. It lives in `upscaling/` because that room holds the image tools outside
generation and its import rules fit (the `scripts/` room may reach it).
May import: models (the loaders above), imaging, errors, devices, paths.
"""
