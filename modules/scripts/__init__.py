"""Scripts: the typed Script base class, its arguments, hook dispatch and built-ins.

`base.py` is what extension authors subclass; `args.py` turns API payloads (lists in
field order or dicts) into a script's `Args` dataclass; `callbacks.py` holds the
global callback registry; `run.py` calls the hooks of one job with error isolation.
"""
