"""txt2img: from a validated request to saved images with their infotext.

`txt2img(runtime, params)` is a generator: it yields one `Progress` per sampling step
and returns a `GenerationResult`. Whoever drives it (the job queue, a test) may send
back `"skip"` (end the current batch, decode what it has) or `"interrupt"` (end the
job after decoding the current batch). Nothing here touches shared state: settings
are a per-request copy and the model is only read.

The order of work follows A1111 (docs/a1111-semantics.md): seeds for the whole job
(`plan.py`), then per batch: conditioning, sigmas, first noise from per-image
generators, the sampler loop (`sample.py`), the hires-fix pass (`hires.py`), VAE
decode, infotext and saving (`output.py`).
"""

from __future__ import annotations

from collections.abc import Generator

from modules.jobs import Command, Progress
from modules.pipeline import hires
from modules.pipeline.output import collect_batch, new_result, save_batch_grid
from modules.pipeline.params import GenerationResult, Txt2ImgParams
from modules.pipeline.plan import plan_txt2img
from modules.pipeline.sample import sample_batch
from modules.scripts.base import BatchInfo


def txt2img(runtime, params: Txt2ImgParams) -> Generator[Progress, Command, GenerationResult]:
    """Run a txt2img job; see the module docstring for the protocol."""
    if params.script_name:  # a selectable script replaces the normal processing
        from modules.scripts.selected import run_selected

        return (yield from run_selected(runtime, params, is_img2img=False, process=txt2img))
    plan = plan_txt2img(runtime, params)
    plan.scripts.call("before_process", plan)
    plan.scripts.call("process", plan)
    result = new_result(plan)
    size = params.batch_size
    if params.enable_hr:
        hires_pass = hires.prepare(runtime, plan)
    for batch in range(params.n_iter):
        part = slice(batch * size, (batch + 1) * size)
        plan.scripts.call("process_batch", plan, BatchInfo(batch, plan.prompts[part],
                                                           plan.seeds[part], plan.subseeds[part]))
        finished = ([params.firstpass_image.convert("RGB")] * size
                    if params.firstpass_image is not None else None)
        if finished is None:
            latents, command = yield from sample_batch(plan, part, job_no=batch * plan.passes)
        else:  # hires fix on a finished picture: it stands in for the first pass
            latents, command = None, None
        final = plan
        if params.enable_hr and command is None:  # a skipped first pass keeps its size
            latents, command = yield from hires_pass.run(part, latents, job_no=batch * 2 + 1,
                                                         images=finished)
            final = hires_pass.plan
        collect_batch(runtime, final, part, latents, result, batch_index=batch)
        if command == "interrupt" or result.interrupted:
            result.interrupted = True
            break
    save_batch_grid(runtime, plan, result)
    plan.scripts.call("postprocess", plan, result)
    return result
