"""Model files: reading, detecting, hashing, assembling, merging and holding models.

`safetensors_io.py`, `safe_unpickle.py`, `tensor_source.py`, `gguf_io.py` read files
safely (never an unrestricted unpickle); `lowbit_load.py` loads a diffusion model with
its weights in low bits (float8, GGUF; the "Diffusion in Low Bits" option, read at
every load by `storage_option.py`);
`detection.py` / `families.py` recognise the family from the header alone;
`single_file.py`, `diffusers_folder.py`, `diffusers_keys.py` map layouts
(`sd3_keys.py`: diffusers' SD3 transformer names to the MMDiT's; `flux_keys.py`: diffusers'
Flux transformer names to BFL's);
`loader.py` builds an `SDModel`; `manager.py` holds the loaded model, VAE choice and
hash cache; `patcher.py` gives per-job clones with LoRA patches; `offload.py` moves
components for --medvram / --lowvram; `merge*.py` is the Checkpoint Merger;
`folders.py` walks every kind of model folder by one rule for links;
`interrogate_files.py` finds and loads the interrogators' BLIP / CLIP / DeepBooru files.
SD3 / SD3.5 / Flux.1: `flow_families.py` declares them, `flow_detection.py` recognises
files and parts from headers, `flow_parts.py` finds separate text encoders / VAEs,
`flow_loader.py` plans a load (every layout), `flow_model.py` assembles the `FlowModel`,
`flow_manager.py` is the manager's path for them.
May import: nn, conditioning and sampling (to assemble a model's parts), networks
(patch math), imaging (file-name rules), devices, paths, errors; never `pipeline/`,
`api/` or `webui/`.
"""
