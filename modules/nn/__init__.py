"""Neural network modules: U-Net, VAE, ControlNet, text encoders, attention.

Literate model code with CompVis attribute names, so single-file checkpoints load by
name: `unet*.py`, `autoencoder.py` / `vae_blocks.py` / `vae_tiled.py`, `controlnet.py`,
`mmdit.py` / `mmdit_blocks.py` (the SD3 / SD3.5 transformer, Stability AI names),
`flux.py` / `flux_blocks.py` (the Flux.1 transformer, Black Forest Labs names),
`text_encoders.py` (transformers' CLIP classes) and their key maps, `t5_encoder.py` (T5 v1.1
XXL through transformers' `T5EncoderModel`), `attention.py`
(SDPA, sliced, xformers), `token_merging.py`, `configs.py` (typed dataclasses),
`lowbit.py` (layers keeping float8 / GGUF weights, dequantized per call) with
`gguf_quants.py` (GGML block formats in torch), `deepbooru.py` (DeepDanbooru's tagger
ResNet, TorchDeepDanbooru names).
May import: torch, transformers, gguf (GGML type names and block sizes) and other `nn/`
files only: it knows nothing of prompts, files or HTTP.
"""
