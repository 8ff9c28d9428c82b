"""Hypertile: A1111 1.10's built-in HyperTile option as an always-on script
(`modules.nn.hypertile`).

A1111 drives it by its settings (Optimizations: `hypertile_enable_unet`, ...); here the
script's own arguments switch it on (a pasted A1111 infotext sets them through
`infotext_fields`), and the settings of A1111's names do too (`modules/settings/tools.py`;
`override_settings` per request): where an argument enables a part (`unet`, `vae`), that
part uses the arguments' depth / tile / swap values, else the settings'. The infotext follows A1111:
"Hypertile U-Net: True" (or "Hypertile U-Net second pass: True" for the hires pass
only) and the max depth / max tile size / swap size keys when they differ from the
defaults; the same for "Hypertile VAE".

U-Net only (SD1, SD2, SDXL): on a flow model (SD3, Flux.1: no U-Net self-attention
layers of these depths) the U-Net part is not applied and one warning says so.
The VAE part (any family's VAE) tiles the decoder's middle attention block in the job's
final decodes (`Plan.vae_attention`; a tiled VAE decode runs without it). The tile choice
draws from a `random.Random` seeded with the job's first seed, made afresh for every
sampling pass (A1111 reseeds it for the job and for the hires pass) and once for the
job's decodes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from modules.nn.hypertile import HyperTileUNet, HyperTileVAE, TileOptions
from modules.nn.unet_patches import with_patch
from modules.scripts.args import arg
from modules.scripts.base import SamplingInfo
from modules.scripts.builtin.tool_script import ToolScript

DEFAULT_UNET = TileOptions(max_depth=3, max_tile=256, swap_size=3)
DEFAULT_VAE = TileOptions(max_depth=3, max_tile=128, swap_size=3)
# Infotext key suffix -> TileOptions field
_KEYS = {"max depth": "max_depth", "max tile size": "max_tile", "swap size": "swap_size"}


@dataclass
class HypertileArgs:
    unet: bool = arg(False, "Enable Hypertile U-Net")
    unet_second_pass: bool = arg(False, "Enable Hypertile U-Net for hires fix second pass")
    max_depth_unet: int = arg(3, "Hypertile U-Net max depth", minimum=0, maximum=3, step=1)
    max_tile_unet: int = arg(256, "Hypertile U-Net max tile size", minimum=0, maximum=512,
                             step=16)
    swap_size_unet: int = arg(3, "Hypertile U-Net swap size", minimum=0, maximum=64, step=1)
    vae: bool = arg(False, "Enable Hypertile VAE")
    max_depth_vae: int = arg(3, "Hypertile VAE max depth", minimum=0, maximum=3, step=1)
    max_tile_vae: int = arg(128, "Hypertile VAE max tile size", minimum=0, maximum=512, step=16)
    swap_size_vae: int = arg(3, "Hypertile VAE swap size", minimum=0, maximum=64, step=1)


@dataclass(frozen=True)
class UNetChoice:
    """What the job asks of the U-Net part: on for both passes, for the hires pass only."""

    all_passes: bool
    second_pass: bool
    options: TileOptions


def setting(plan, name: str, default):
    """A job setting of A1111's name (`default`: A1111's, for a plan without settings)."""
    return getattr(getattr(plan, "settings", None), name, default)


def unet_choice(plan, args: HypertileArgs) -> UNetChoice:
    """The arguments where they enable the U-Net part, else the job's settings."""
    if args.unet or args.unet_second_pass:
        return UNetChoice(args.unet, args.unet_second_pass,
                          TileOptions(args.max_depth_unet, args.max_tile_unet, args.swap_size_unet))
    return UNetChoice(
        setting(plan, "hypertile_enable_unet", False),
        setting(plan, "hypertile_enable_unet_secondpass", False),
        TileOptions(setting(plan, "hypertile_max_depth_unet", DEFAULT_UNET.max_depth),
                    setting(plan, "hypertile_max_tile_unet", DEFAULT_UNET.max_tile),
                    setting(plan, "hypertile_swap_size_unet", DEFAULT_UNET.swap_size)))


def vae_choice(plan, args: HypertileArgs) -> TileOptions | None:
    """The VAE part's options, or None when it is off."""
    if args.vae:
        return TileOptions(args.max_depth_vae, args.max_tile_vae, args.swap_size_vae)
    if setting(plan, "hypertile_enable_vae", False):
        return TileOptions(setting(plan, "hypertile_max_depth_vae", DEFAULT_VAE.max_depth),
                           setting(plan, "hypertile_max_tile_vae", DEFAULT_VAE.max_tile),
                           setting(plan, "hypertile_swap_size_vae", DEFAULT_VAE.swap_size))
    return None


def _option_keys(prefix: str, options: TileOptions, default: TileOptions) -> dict:
    return {f"{prefix} {key}": getattr(options, name) for key, name in _KEYS.items()
            if getattr(options, name) != getattr(default, name)}


class Hypertile(ToolScript):
    """Splits self-attention into tiles of the token map (faster at large sizes)."""

    Args = HypertileArgs
    TITLE = "Hypertile"

    def infotext_fields(self) -> dict[str, str]:
        fields = {"unet": "Hypertile U-Net", "unet_second_pass": "Hypertile U-Net second pass",
                  "vae": "Hypertile VAE"}
        for part in ("unet", "vae"):
            label = "U-Net" if part == "unet" else "VAE"
            for key, name in _KEYS.items():
                fields[f"{name}_{part}"] = f"Hypertile {label} {key}"
        return fields

    def process(self, plan, args: HypertileArgs) -> None:
        unet = unet_choice(plan, args)
        if unet.all_passes or unet.second_pass:
            if plan.loaded.family.is_flow:
                plan.warnings.append(
                    "Hypertile: its U-Net part applies to U-Net models (SD1, SD2, SDXL); "
                    f"not applied to this {plan.loaded.family.label} model")
            else:
                key = "Hypertile U-Net" if unet.all_passes else "Hypertile U-Net second pass"
                plan.extra_params[key] = True
                plan.extra_params.update(_option_keys("Hypertile U-Net", unet.options,
                                                      DEFAULT_UNET))
        vae = vae_choice(plan, args)
        if vae is not None:
            # One RNG for the job's decodes (the plan is the job's own: no other job sees it).
            tiles = HyperTileVAE(vae, random.Random(plan.seeds[0] if plan.seeds else 0))
            plan.vae_attention = tiles.around
            plan.extra_params["Hypertile VAE"] = True
            plan.extra_params.update(_option_keys("Hypertile VAE", vae, DEFAULT_VAE))

    def process_before_every_sampling(self, plan, args: HypertileArgs,
                                      sampling: SamplingInfo) -> None:
        unet = unet_choice(plan, args)
        wanted = unet.all_passes or (plan.second_pass and unet.second_pass)
        if not wanted or sampling.cfg_hooks is None or plan.loaded.family.is_flow:
            return
        patch = HyperTileUNet(unet.options, random.Random(plan.seeds[0] if plan.seeds else 0))

        def add_patch(params) -> None:
            params.unet_kwargs["patches"] = with_patch(params.unet_kwargs.get("patches"), patch)

        sampling.cfg_hooks.before_model.append(add_patch)
