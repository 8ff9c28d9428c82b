"""Extra networks: LoRA-family adapters, textual-inversion embeddings, hypernetworks.

`activate.py` is the entry point a job uses; `names.py` maps file keys onto our modules
(`flow_names.py`: the spellings of Flux.1 and SD3/SD3.5 transformers, whose diffusers
names may cover rows of a fused layer),
`adapters.py` holds the weight math, `files.py` / `library.py` / `embeddings.py` read
the user's files. Patches are applied by `modules/models/patcher.py` on per-request clones.
Hypernetworks (`hypernetwork.py` modules, `hypernetwork_files.py` reading,
`hypernetwork_library.py` listing and tags) ride on the clone as a context transform.
May import: nn, models, conditioning, devices, paths; never `pipeline/`, `api/` or
`webui/`.
"""
