"""ControlNet as a built-in Easel extension (the API of sd-webui-controlnet, our code).

Zhang et al. (2023), "Adding Conditional Control to Text-to-Image Diffusion Models".
An always-on script titled "ControlNet" with `UNIT_COUNT` units; API clients send
`alwayson_scripts: {"controlnet": {"args": [unit dict, ...]}}` (fields and defaults
in `easel_controlnet/units.py`). It uses the public extension API only:

- `process`: writes each active unit's `ControlNet <i>` infotext key;
- `process_before_every_sampling` (first pass and hires pass): loads each unit's model
  (cached per Runtime on this script instance), preprocesses its picture, and appends a
  `ControlStepHook` to this sampler call's CFG hooks; the hook passes the residuals to
  the U-Net through its documented `control=` input (`easel_controlnet/inject.py`), and
  the T2I-Adapter / IP-Adapter units' U-Net patches (`easel_controlnet/adapters.py`);
- `setup(ctx)`: registers `/controlnet/*` routes from `app_started` (behind --api-auth).

A unit that cannot run (missing, damaged or unsafe model file, missing picture,
preprocessor without its weights) becomes a warning in the result naming the unit and
the reason, its `ControlNet <i>` infotext key is removed (the infotext names only what
was applied), and the job goes on without it.
"""

from dataclasses import dataclass

import torch
from easel_controlnet.adapters import AdapterUnit
from easel_controlnet.api import register_routes
from easel_controlnet.inject import ActiveUnit, ControlStepHook
from easel_controlnet.library import ControlNetCache
from easel_controlnet.prepare import Target, prepare_unit
from easel_controlnet.preprocessors import PreprocessorError
from easel_controlnet.units import ControlNetUnit

from modules.models.errors import ModelLoadError
from modules.scripts.args import arg
from modules.scripts.base import AlwaysVisible, SamplingInfo, Script

UNIT_COUNT = 3


class ControlNetScript(Script):
    """Always-on ControlNet with `UNIT_COUNT` units."""

    @dataclass
    class Args:
        unit_0: ControlNetUnit = arg(ControlNetUnit(), "ControlNet Unit 0")
        unit_1: ControlNetUnit = arg(ControlNetUnit(), "ControlNet Unit 1")
        unit_2: ControlNetUnit = arg(ControlNetUnit(), "ControlNet Unit 2")

    def __init__(self) -> None:
        self.cache = ControlNetCache(size=2)

    def title(self) -> str:
        return "ControlNet"

    def show(self, is_img2img: bool):
        return AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        """One tab per unit; each unit's hidden state holds its API dict (webui only)."""
        from easel_controlnet.ui import unit_tabs  # gradio: imported by the web UI only

        return unit_tabs(self, is_img2img)

    def ui_check(self, args: dict, is_img2img: bool) -> None:
        """The UI refuses an enabled unit without a model (or, txt2img, a picture)."""
        from easel_controlnet.ui_spec import check_units

        check_units(args, is_img2img=is_img2img)

    def infotext_fields(self) -> dict[str, str]:
        return {f"unit_{i}": f"ControlNet {i}" for i in range(UNIT_COUNT)}

    @staticmethod
    def units(args) -> list[tuple[int, ControlNetUnit]]:
        """The active units with their index."""
        units = [getattr(args, f"unit_{i}") for i in range(UNIT_COUNT)]
        return [(i, unit) for i, unit in enumerate(units) if unit.active]

    def process(self, plan, args) -> None:
        for index, unit in self.units(args):
            plan.extra_params[f"ControlNet {index}"] = unit.infotext()

    def _target(self, plan) -> Target:
        unet = plan.loaded.model.unet
        parameter = next(unet.parameters())
        paths = getattr(self.context, "paths", None)
        model_dir = paths.controlnet_dir if paths is not None else None
        return Target(width=plan.params.width, height=plan.params.height,
                      model_dir=paths.controlnet_dirs if paths is not None else None,
                      annotator_dir=model_dir / "annotators" if model_dir else None,
                      base=plan.loaded.family.unet, device=parameter.device,
                      dtype=parameter.dtype, seed=plan.seeds[0] if plan.seeds else 0,
                      clip_vision_dir=getattr(paths, "clip_vision_dir", None))

    def process_before_every_sampling(self, plan, args, sampling: SamplingInfo) -> None:
        units = self.units(args)
        if not units or sampling.cfg_hooks is None:
            return
        target = self._target(plan)
        init_images = getattr(plan.params, "init_images", None) or [None]
        active: list[ActiveUnit] = []
        adapters: list[AdapterUnit] = []
        for index, unit in units:
            try:
                with torch.inference_mode(False):
                    ready, _ = prepare_unit(unit, target, cache=self.cache,
                                            fallback=init_images[0])
            except (ValueError, ModelLoadError, PreprocessorError) as error:
                skip_unit(plan, index, str(error))
                continue
            except Exception as error:  # a damaged model file: skipped and said, never a crash
                skip_unit(plan, index, f"the model could not be used ({type(error).__name__}: "
                                       f"{error})")
                continue
            (active if isinstance(ready, ActiveUnit) else adapters).append(ready)
        if active or adapters:
            sampling.cfg_hooks.before_model.append(ControlStepHook(active, adapters))


def skip_unit(plan, index: int, reason: str) -> None:
    """A unit that cannot run: a warning in the result, and no infotext naming its model."""
    message = f"ControlNet unit {index}: {reason}; the unit was skipped"
    if message not in plan.warnings:
        plan.warnings.append(message)
    plan.extra_params.pop(f"ControlNet {index}", None)


def setup(ctx) -> None:
    """Register the `/controlnet/*` API routes once the app starts."""
    def app_started(app) -> None:
        model_dir = ctx.paths.controlnet_dir if ctx.paths is not None else None
        register_routes(app, model_dir=ctx.paths.controlnet_dirs if ctx.paths else None,
                        annotator_dir=model_dir / "annotators" if model_dir else None,
                        unit_count=UNIT_COUNT)

    ctx.on("app_started", app_started)
