"""Tiled Diffusion: the always-on script (pkuliyi2015's multidiffusion-upscaler extension).

Options, defaults and the infotext follow the extension ("Tiled Diffusion" accordion):
method MultiDiffusion / Mixture of Diffusers, latent tile width and height 96, overlap
48, tile batch size 4; Noise Inversion for img2img (steps 10, retouch 1, renoise
strength 1, renoise kernel size 64); Region Prompt Control with up to 8 rectangles
(`regions`: dicts with the extension's BBoxSettings names `enable, x, y, w, h, prompt,
neg_prompt, blend_mode, feather_ratio, seed`; x, y, w, h are fractions of the image).

At every sampler call (first pass and hires pass) the job's guided denoiser is wrapped in
`modules.sampling.tiled_diffusion.TiledDenoiser`. Region prompts are appended to the
image's prompt and encoded with the job's conditioner (LoRA, embeddings); a region's seed
(not -1) draws the starting noise inside its rectangle in txt2img.

Infotext: the extension writes one key, "Tiled Diffusion", holding a dict; here the dict
is written as a JSON string (`Tiled Diffusion: "{...}"`) so it survives A1111's params
line, and pasting it sets `pasted`, which then overrides the other fields.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, replace

import torch

from modules.pipeline.sample import encode_prompts, extra_network_tags, initial_scale
from modules.sampling import tiled_diffusion as td
from modules.sampling.tiled_diffusion_inversion import (
    inversion_sigmas,
    invert,
    renoise,
)
from modules.scripts.args import arg
from modules.scripts.base import AlwaysVisible, SamplingInfo, Script

TITLE = "Tiled Diffusion"
INFOTEXT_KEY = "Tiled Diffusion"
MAX_REGIONS = 8
REGION_DEFAULTS = {"enable": True, "x": 0.0, "y": 0.0, "w": 1.0, "h": 1.0, "prompt": "",
                   "neg_prompt": "", "blend_mode": "Background", "feather_ratio": 0.2,
                   "seed": -1}
# Args field -> the extension's key inside the infotext dict.
INFO_KEYS = {"method": "Method", "tile_width": "Tile tile width",
             "tile_height": "Tile tile height", "overlap": "Tile Overlap",
             "tile_batch_size": "Tile batch size"}
INVERSION_KEYS = {"noise_inverse": "NoiseInv", "noise_inverse_steps": "NoiseInv Steps",
                  "noise_inverse_retouch": "NoiseInv Retouch",
                  "noise_inverse_renoise_strength": "NoiseInv Renoise strength",
                  "noise_inverse_renoise_kernel": "NoiseInv Kernel size"}


@dataclass
class TiledDiffusionArgs:
    enabled: bool = arg(False, "Enable Tiled Diffusion")
    method: str = arg(td.MULTIDIFFUSION, "Method", choices=td.METHODS)
    tile_width: int = arg(96, "Latent tile width", minimum=4, maximum=256, step=16)
    tile_height: int = arg(96, "Latent tile height", minimum=4, maximum=256, step=16)
    overlap: int = arg(48, "Latent tile overlap", minimum=0, maximum=256, step=4)
    tile_batch_size: int = arg(4, "Latent tile batch size", minimum=1, maximum=8, step=1)
    noise_inverse: bool = arg(False, "Enable Noise Inversion (img2img)")
    noise_inverse_steps: int = arg(10, "Inversion steps", minimum=1, maximum=200, step=1)
    noise_inverse_retouch: float = arg(1.0, "Retouch", minimum=1.0, maximum=100.0, step=0.1)
    noise_inverse_renoise_strength: float = arg(1.0, "Renoise strength", minimum=0.0,
                                                maximum=2.0, step=0.01)
    noise_inverse_renoise_kernel: int = arg(64, "Renoise kernel size", minimum=2, maximum=512,
                                            step=1)
    enable_bbox_control: bool = arg(False, "Enable Region Prompt Control")
    draw_background: bool = arg(False, "Draw full canvas background")
    regions: list = arg([], "Regions (up to 8: x, y, w, h, prompt, neg_prompt, "
                            "blend_mode, feather_ratio, seed)")
    pasted: str = arg("", "Pasted infotext settings (JSON; overrides the fields above)")


def parse_regions(raw: list) -> list[dict]:
    """The enabled regions with the extension's defaults filled in; ValueError if bad."""
    if len(raw) > MAX_REGIONS:
        raise ValueError(f"Tiled Diffusion: at most {MAX_REGIONS} regions, got {len(raw)}")
    regions = []
    for number, entry in enumerate(raw, 1):
        if not isinstance(entry, dict) or set(entry) - set(REGION_DEFAULTS):
            raise ValueError(f"Tiled Diffusion: region {number} must be an object with "
                             f"keys among {sorted(REGION_DEFAULTS)}")
        region = {**REGION_DEFAULTS, **entry}
        if region["blend_mode"] not in ("Background", "Foreground"):
            raise ValueError(f"Tiled Diffusion: region {number} blend_mode must be "
                             f"Background or Foreground")
        if region["enable"]:
            regions.append(region)
    return regions


def warn_region_networks(plan, region: dict) -> None:
    """Extra-network tags in a region's prompt are removed, not applied: the networks are
    merged into the job's model once, for the whole image (the extension does not apply
    them either). Say so, naming the tags, instead of dropping them silently."""
    tags = [tag for text in (region["prompt"], region["neg_prompt"])
            for tag in extra_network_tags(text)]
    if tags:
        names = ", ".join(tags)
        message = (f"Tiled Diffusion: {names} in a region prompt is not applied (extra "
                   f"networks act on the whole image: put them in the main prompt)")
        if message not in plan.warnings:
            plan.warnings.append(message)


def settings_info(args: TiledDiffusionArgs, is_img2img: bool) -> dict:
    """The extension's infotext dict for these settings."""
    info = {key: getattr(args, name) for name, key in INFO_KEYS.items()}
    if is_img2img and args.noise_inverse:
        info.update({key: getattr(args, name) for name, key in INVERSION_KEYS.items()})
    if args.enable_bbox_control:
        info["Draw background"] = args.draw_background
        info["Region control"] = {f"Region {k + 1}": region
                                  for k, region in enumerate(parse_regions(args.regions))}
    return info


def args_from_info(args: TiledDiffusionArgs, text: str) -> TiledDiffusionArgs:
    """`args` with the settings of a pasted "Tiled Diffusion" value (JSON or a dict repr)."""
    try:
        info = json.loads(text)
    except ValueError:
        info = ast.literal_eval(text)
    if not isinstance(info, dict):
        raise ValueError("Tiled Diffusion: the pasted settings are not a dict")
    changes = {name: info[key] for name, key in {**INFO_KEYS, **INVERSION_KEYS}.items()
               if key in info}
    changes["noise_inverse"] = bool(info.get("NoiseInv", False))
    if "Region control" in info:
        changes.update(enable_bbox_control=True, regions=list(info["Region control"].values()),
                       draw_background=bool(info.get("Draw background", False)))
    for name in ("tile_width", "tile_height", "overlap", "tile_batch_size",
                 "noise_inverse_steps", "noise_inverse_renoise_kernel"):
        if name in changes:
            changes[name] = int(changes[name])
    return replace(args, enabled=True, pasted="", **changes)


def region_window(region: dict, height: int, width: int, align: int) -> td.Window:
    """A region's fractions as a latent window (clamped to the latent, at least 1 px)."""
    left = min(width - 1, max(0, int(region["x"] * width) // align * align))
    top = min(height - 1, max(0, int(region["y"] * height) // align * align))
    w = max(1, min(width - left, math.ceil(region["w"] * width)))
    h = max(1, min(height - top, math.ceil(region["h"] * height)))
    return td.Window(top, left, h, w)


class TiledDiffusion(Script):
    """Large images on bounded memory: the latent denoised tile by tile, blended."""

    Args = TiledDiffusionArgs

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool):
        return AlwaysVisible

    def infotext_fields(self) -> dict[str, str]:
        return {"pasted": INFOTEXT_KEY}

    @staticmethod
    def effective(args: TiledDiffusionArgs) -> TiledDiffusionArgs:
        """The arguments after a pasted infotext value (which turns the script on)."""
        return args_from_info(args, args.pasted) if args.pasted else args

    def process(self, plan, args: TiledDiffusionArgs) -> None:
        args = self.effective(args)
        if not args.enabled:
            return
        is_img2img = plan.kind == "img2img"
        plan.extra_params[INFOTEXT_KEY] = json.dumps(settings_info(args, is_img2img))

    def process_before_every_sampling(self, plan, args: TiledDiffusionArgs,
                                      sampling: SamplingInfo) -> None:
        args = self.effective(args)
        if not args.enabled or sampling.denoiser is None:
            return
        height, width = sampling.x.shape[-2:]
        align = 2 if plan.loaded.family.is_flow else 1  # the flow transformers' 2x2 patches
        regions = parse_regions(args.regions) if args.enable_bbox_control else []
        windows = ([] if regions and not args.draw_background else
                   td.tile_grid(height, width, args.tile_height, args.tile_width, args.overlap,
                                align))
        built = [self._region(plan, sampling, region, region_window(region, height, width,
                                                                     align))
                 for region in regions]
        if (args.noise_inverse and sampling.start is not None and plan.kind == "img2img"
                and len(sampling.sigmas) > 1):
            sampling.x = self._inverted(plan, args, sampling, windows, built)
        elif sampling.start is None:
            self._seed_regions(plan, sampling, regions, built)
        sampling.denoiser = td.TiledDenoiser(sampling.denoiser, windows, args.method,
                                             args.tile_batch_size, built)

    def _region(self, plan, sampling: SamplingInfo, region: dict,
                window: td.Window) -> td.Region:
        """The region's conds: its prompt appended to each image's own prompt."""
        count = len(sampling.conds)
        first = sampling.batch_number * max(1, plan.params.batch_size)

        def joined(base: str, extra: str) -> str:
            return ", ".join(part for part in (base, extra) if part)
        prompts = [joined(text, region["prompt"]) for text in plan.prompts[first:first + count]]
        negatives = [joined(text, region["neg_prompt"])
                     for text in plan.negative_prompts[first:first + count]]
        warn_region_networks(plan, region)
        seen = replace(plan, prompts=prompts, negative_prompts=negatives)
        conds, unconds = encode_prompts(seen, slice(0, count))
        return td.Region(window, conds, unconds, region["blend_mode"] == "Foreground",
                         float(region["feather_ratio"]))

    @staticmethod
    def _seed_regions(plan, sampling: SamplingInfo, regions: list[dict],
                      built: list[td.Region]) -> None:
        """Starting noise inside each seeded region from its own seed (the extension's)."""
        seeded = [(region, made) for region, made in zip(regions, built) if region["seed"] >= 0]
        if not seeded:
            return
        x = sampling.x.clone()
        scale = initial_scale(plan, float(sampling.sigmas[0]), plan.settings)
        for region, made in seeded:
            w = made.window
            generator = torch.Generator().manual_seed(int(region["seed"]))
            noise = torch.randn((1, x.shape[1], w.height, w.width), generator=generator)
            w.of(x).copy_(noise.to(x) * scale)
        sampling.x = x

    @staticmethod
    def _inverted(plan, args: TiledDiffusionArgs, sampling: SamplingInfo,
                  windows: list, built: list) -> torch.Tensor:
        """The init latent's inverted noise at the first sigma (tiled, cond prediction)."""
        cfg = sampling.denoiser
        init = sampling.start.init_latent.to(sampling.x)
        sigmas = sampling.sigmas
        positive = sigmas[sigmas > 0]
        sigma_start, sigma_min = float(sigmas[0]), float(positive.min())
        tiled = td.TiledDenoiser(cfg, windows, args.method, args.tile_batch_size, built)
        saved_scale, saved_step = cfg.cfg_scale, cfg.step
        cfg.cfg_scale = 1.0  # the conditional prediction alone
        try:
            with torch.inference_mode():
                x = invert(tiled, init, inversion_sigmas(sigma_min, sigma_start,
                                                         args.noise_inverse_steps),
                           retouch=args.noise_inverse_retouch)
        finally:
            cfg.cfg_scale, cfg.step = saved_scale, saved_step
        noise = (sampling.x - (1 - sigma_start) * init if plan.loaded.family.is_flow
                 else sampling.x - init) / sigma_start  # the job's own random noise
        kernel = max(1, args.noise_inverse_renoise_kernel // plan.loaded.family.vae.downscale)
        return renoise(x, init, sigma_start, noise, strength=args.noise_inverse_renoise_strength,
                       kernel=kernel, flow=plan.loaded.family.is_flow)
