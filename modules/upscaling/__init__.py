"""Upscalers and the Extras tab: from an image to a larger one.

`registry.py` lists and runs upscalers (Lanczos, Nearest, model files in A1111's
folders); `files.py` / `keys.py` read ESRGAN-family files safely, `rrdbnet.py` and
`network.py` are our own networks, `spandrel_models.py` runs other architectures
through spandrel, in the app or in the separate environment through `remote.py` and
`worker.py`; `extras.py` / `extras_jobs.py` are the Extras operations; `face_*.py` are
face restoration (GFPGAN, CodeFormer, RestoreFormer: `face_registry.py` finds the files,
`face_detect.py` / `face_align.py` / `face_restore.py` detect, align and paste back,
`face_models.py` runs the network where spandrel runs); `interrogate/` is the CLIP and
DeepBooru interrogators (a prompt from a picture).
May import: models (safe readers), imaging, errors, paths, and `app.bootstrap_upscalers`
for the environment's location; never `pipeline/`, `api/` or `webui/`.
"""
