"""Scripts: the typed Script base class, its arguments, hook dispatch and built-ins.

`base.py` is what extension authors subclass; `args.py` turns API payloads (lists in
field order or dicts) into a script's `Args` dataclass; `callbacks.py` holds the
global callback registry; `run.py` calls the hooks of one job with error isolation.
`builtin/` holds A1111's built-in scripts (X/Y/Z plot, prompt matrix, outpainting,
SD upscale, loopback, ...).
May import: pipeline (the built-ins run jobs), sampling, nn (the guidance tools' U-Net
patches), imaging, upscaling, infotext;
never `api/` or `webui/`. `modules.scripts` is also an A1111 compatibility name
(docs/compatibility.md).
"""
