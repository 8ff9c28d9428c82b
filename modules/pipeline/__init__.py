"""Generation jobs: from a validated request to saved images with their infotext.

`params.py` holds the typed requests (A1111's field names) and results; `plan.py` fixes
a job before its first batch (`limits.py`: the pixel budget of a request); `sample.py`
samples one batch; `output.py` decodes, writes infotext and saves; `txt2img.py`,
`img2img.py` (+ `img2img_batch.py`), `hires.py` and `refiner.py` are the jobs and passes
built from them; `vae_codec.py` moves between pixels and latents, `previews.py` makes
live previews, `image_conditioning.py` the extra channels of inpainting U-Nets,
`infotext_fields.py` maps a pasted infotext onto request fields, `tiling.py` gives a
job with `tiling` circularly padded views of its U-Net and VAE (seamless textures), and
`flow_plan.py` holds what SD3.x / Flux.1 jobs add (size multiple, conditioner,
distilled guidance, infotext).
May import: conditioning, sampling, networks, models, nn, imaging, upscaling, scripts
(hook dispatch) and the top-level modules (settings, jobs, infotext, errors, devices);
never `api/`, `app/` or `webui/`.
"""
