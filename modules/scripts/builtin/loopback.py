"""Loopback (img2img): feed each output back in as the next init image, `loops` times.

As A1111's script (docs/a1111-semantics.md, "Built-in scripts"): batch size is forced to 1 and
`n_iter` becomes the number of independent runs. Every pass is a normal img2img job; after each one
the seed goes up by one (so run `n`, loop `i` has seed `seed + n * loops + i`) and the
denoising strength moves from the request's value towards `final_denoising_strength`
along the chosen curve, evaluated at `(i + 1) / (loops - 1)`:

- "Aggressive": sin(t * pi / 2) (changes fast, then levels off),
- "Linear": t,
- "Lazy": 1 - cos(t * pi / 2) (changes slowly first).

After the first pass masked content becomes "original", so a mask keeps working
on the picture as it now is. With one run every pass's image is returned; with
several, each run's last image. Whenever that makes two or more images they are
also put in a one-row grid, first in the result (`return_grid`). Each image keeps
its own infotext (A1111 gives every image the first pass's), with the keys
`Final denoising strength` and `Denoising curve`.

With `append_interrogation` "CLIP" or "DeepBooru" every pass's prompt is the request's
prompt, ", " and the interrogation of that pass's init image (A1111's behaviour; the
interrogators of `modules/upscaling/interrogate/`); a missing model is refused before
the job is queued, naming the folder and file expected.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from modules.imaging.grid import image_grid
from modules.scripts.args import ScriptArgsError, arg
from modules.scripts.base import Script, ScriptProcessing
from modules.scripts.builtin import common
from modules.upscaling.interrogate.service import (
    InterrogatorMissing,
    interrogate,
    interrogators_of,
)

TITLE = "Loopback"
CURVES: tuple[str, ...] = ("Aggressive", "Linear", "Lazy")
INTERROGATORS: tuple[str, ...] = ("None", "CLIP", "DeepBooru")
INTERROGATOR_MODELS = {"CLIP": "clip", "DeepBooru": "deepdanbooru"}


def denoising_strength(initial: float, final: float, curve: str, loop: int, loops: int) -> float:
    """The strength of pass `loop` (0-based) of `loops` (A1111's curves)."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shape = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        shape = 1 - math.cos(progress * math.pi * 0.5)
    else:
        shape = progress
    return initial + (final - initial) * shape


class Loopback(Script):
    @dataclass
    class Args:  # A1111's order
        loops: int = arg(4, "Loops", minimum=1, maximum=32, step=1)
        final_denoising_strength: float = arg(0.5, "Final denoising strength", minimum=0.0,
                                              maximum=1.0, step=0.01)
        denoising_curve: str = arg("Linear", "Denoising strength curve", choices=CURVES)
        append_interrogation: Any = arg("None", "Append interrogated prompt at each iteration",
                                        choices=INTERROGATORS)

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def check(self, runtime, params, args: "Loopback.Args") -> None:
        if args.append_interrogation == "None":
            return
        try:
            interrogators_of(runtime).check(INTERROGATOR_MODELS[args.append_interrogation])
        except InterrogatorMissing as error:
            raise ScriptArgsError(TITLE, "append_interrogation",
                                  f"{args.append_interrogation!r}: {error}") from None

    def run(self, p: ScriptProcessing, args: "Loopback.Args"):
        params = common.fixed_seed_params(common.resolve_scale_by(p.params))
        params = dataclasses.replace(params, batch_size=1, n_iter=1)
        runs = p.params.n_iter
        keys = {"Final denoising strength": args.final_denoising_strength,
                "Denoising curve": args.denoising_curve}
        history, result = common.empty_result(), common.empty_result()
        for number in range(runs):
            last = yield from self.loop(p, params, args, number,
                                        result if runs == 1 else None)
            if last is not None and runs > 1 and not last.interrupted:
                common.append(result, last)
            if result.interrupted or (last is not None and last.interrupted):
                result.interrupted = True
                break
        for index, infotext in enumerate(result.infotexts):
            result.infotexts[index] = common.insert_infotext_params(infotext, keys)
        common.append(history, result)
        if len(history.images) > 1:
            grid = image_grid(history.images, rows=1)
            common.save_grid(p.runtime, params, grid, history.infotexts[0], kind="img2img")
            settings = p.runtime.settings.for_request(params.override_settings)
            if settings.return_grid:
                common.put_grid_first(result, grid, history.infotexts[0])
        return result

    def loop(self, p: ScriptProcessing, params, args: "Loopback.Args", number: int,
             collect):
        """Generator: one run of `loops` passes; every pass goes into `collect` (if given);
        returns the last pass's result."""
        job, last = params, None
        for i in range(args.loops):
            strength = denoising_strength(params.denoising_strength,
                                          args.final_denoising_strength,
                                          args.denoising_curve, i, args.loops)
            job = dataclasses.replace(job, seed=params.seed + number * args.loops + i,
                                      denoising_strength=strength)
            if args.append_interrogation != "None":
                job = dataclasses.replace(job, prompt=interrogated_prompt(
                    p.runtime, params.prompt, job.init_images[0], args.append_interrogation))
            part = yield from p.process(job)
            if part.interrupted or not part.images:
                part.interrupted = True
                return part
            last = part
            if collect is not None:
                common.append(collect, part)
            job = dataclasses.replace(job, init_images=[part.images[0]], inpainting_fill=1)
        return last


def interrogated_prompt(runtime, prompt: str, image, interrogator: str) -> str:
    """A1111's loop prompt: the request's prompt, ", " and the pass's interrogation."""
    caption = interrogate(runtime, image, INTERROGATOR_MODELS[interrogator])
    return f"{prompt}, {caption}" if prompt else caption
