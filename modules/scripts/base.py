"""The `Script` base class extensions subclass, and the typed objects hooks receive.

A script is a class in an extension's `scripts/*.py` (or a built-in) with A1111's
method names (docs/a1111-semantics.md, "Script hooks") and typed arguments instead of `*args`:

- `title()` names it; API clients match `script_name` / `alwayson_scripts` keys to it
  case-insensitively.
- `show(is_img2img)` returns False (hidden), True (selectable in the Script dropdown)
  or `AlwaysVisible` (runs on every job, with its own UI accordion).
- `Args` is a dataclass of its arguments (`modules.scripts.args.arg` declares labels
  and ranges); `ui(is_img2img)` builds the Gradio controls, one per field, and is
  called by `webui/` only (this module never imports gradio).
- `infotext_fields()` maps `Args` field names to the infotext keys the script writes in
  `plan.extra_params` (A1111's `self.infotext_fields` (component, key) pairs, by field
  name instead of component). Pasting an infotext (the UI's paste button, PNG Info's
  "Send to", an API request's `infotext`) sets those fields of an always-on script from
  the keys present (`modules.pipeline.infotext_fields.infotext_to_alwayson`).
- Lifecycle hooks receive the job's `Plan` (`modules.pipeline.txt2img.Plan`: params,
  settings, prompts, seeds, `extra_params` for the infotext, `warnings`) plus typed
  per-call data. They may change the plan (e.g. `plan.prompts`) before sampling.
- `run(p, args)` (selectable scripts) replaces the normal processing. `p` is a
  `ScriptProcessing`; `run` is a generator that drives `p.process(params)` with
  `yield from` so progress, skip and interrupt keep working, and returns a
  `GenerationResult`. A `run` that returns a result without yielding is accepted too.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from modules.scripts.args import NoArgs


class _AlwaysVisible:
    """Marker returned by `Script.show` for always-on scripts."""

    def __repr__(self) -> str:
        return "AlwaysVisible"


AlwaysVisible = _AlwaysVisible()


@dataclass
class BatchInfo:
    """One batch about to be conditioned and sampled."""

    batch_number: int
    prompts: list[str]
    seeds: list[int]
    subseeds: list[int]


@dataclass
class SamplingInfo:
    """Right before a sampler call (first pass or hires pass); `x` may be replaced."""

    x: Any  # the starting latent (noise * sigma, or the noised init latent)
    sigmas: Any
    conds: list
    unconds: list
    batch_number: int
    # The CFG hooks of this sampler call (`modules.sampling.cfg.Hooks`): a script may
    # append per-job step hooks, e.g. one filling `params.unet_kwargs["control"]`.
    cfg_hooks: Any = None
    # The guided model D(x, sigma) the sampler will call (`CFGDenoiser`); a script may
    # replace it with a wrapper (Tiled Diffusion denoises it tile by tile).
    denoiser: Any = None
    # img2img and the hires pass: their `LatentStart` (init latent); None in txt2img.
    start: Any = None


@dataclass
class PostprocessBatch:
    """A decoded batch; hooks may replace images in `images` (same count)."""

    images: list
    batch_number: int


@dataclass
class PostprocessImage:
    """One image before it is saved; hooks may replace `image`."""

    image: Any
    index: int  # index of the image in the job (seeds[index], prompts[index])


@dataclass
class ScriptProcessing:
    """What a selectable script's `run` gets: the request and a way to process it.

    `process(params)` runs the normal pipeline (txt2img or img2img) with the
    always-on scripts of the request still active; it is a generator to `yield from`.
    """

    runtime: Any
    params: Any  # Txt2ImgParams / Img2ImgParams with script_name cleared
    is_img2img: bool
    process: Callable[[Any], Generator]


class Script:
    """Base class of every script; override what you need (only `title` is required)."""

    Args: ClassVar[type] = NoArgs
    filename: str = ""  # the file it was loaded from (set by the loader)
    extension: str = ""  # the extension's name ("" for built-ins)
    context: Any = None  # its extension's `ExtensionContext` (folder, paths; set by the loader)

    def title(self) -> str:
        raise NotImplementedError

    def show(self, is_img2img: bool) -> bool | _AlwaysVisible:
        return True

    def ui(self, is_img2img: bool) -> list:
        """Gradio components, one per `Args` field in order (called by webui only)."""
        return []

    def infotext_fields(self) -> dict[str, str]:
        """`Args` field name -> the infotext key `process` writes it under, e.g.
        `{"enabled": "freeu_enabled", "b1": "freeu_b1"}`; pasting reads them back."""
        return {}

    def check(self, runtime, params, args: Any) -> None:
        """Selectable scripts: raise ValueError for a request `run` would reject; called
        before the job is queued, so API clients get a 422 naming the problem."""

    def run(self, p: ScriptProcessing, args: Any) -> Any:
        raise NotImplementedError(f"{self.title()} is not a selectable script")

    def before_process(self, plan, args) -> None: ...

    def process(self, plan, args) -> None: ...

    def process_batch(self, plan, args, batch: BatchInfo) -> None: ...

    def process_before_every_sampling(self, plan, args, sampling: SamplingInfo) -> None: ...

    def postprocess_batch(self, plan, args, batch: PostprocessBatch) -> None: ...

    def postprocess_image(self, plan, args, pp: PostprocessImage) -> None: ...

    def postprocess(self, plan, args, result) -> None: ...

    # --------------------------------------------------------------- helpers
    def is_alwayson(self, is_img2img: bool) -> bool:
        return self.show(is_img2img) is AlwaysVisible

    def is_selectable(self, is_img2img: bool) -> bool:
        return self.show(is_img2img) is True


HOOK_NAMES = ("before_process", "process", "process_batch", "process_before_every_sampling",
              "postprocess_batch", "postprocess_image", "postprocess")


@dataclass
class ScriptError:
    """A script or extension failure, as listed by the API and the Extensions tab."""

    where: str
    message: str
    details: list[str] = field(default_factory=list)
