"""Extra networks: LoRA-family adapters, textual-inversion embeddings (hypernetworks: not yet).

`activate.py` is the entry point a job uses; `names.py` maps file keys onto our modules,
`adapters.py` holds the weight math, `files.py` / `library.py` / `embeddings.py` read
the user's files. Patches are applied by `modules/models/patcher.py` on per-request clones.
"""
