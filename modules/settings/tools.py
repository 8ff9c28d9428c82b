"""Settings of the built-in tools, A1111's names and defaults: HyperTile (A1111 1.10's
"Optimizations" section; the "Hypertile" script reads them, `modules/nn/hypertile.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from modules.settings.declare import OPTIMIZATIONS, opt


@dataclass(frozen=True)
class ToolOptions:
    """The tools' options (after the core ones in `Settings`)."""

    # HyperTile (modules/nn/hypertile.py; the "Hypertile" script writes the infotext)
    hypertile_enable_unet: bool = opt(False, "Enable Hypertile U-Net", OPTIMIZATIONS,
                                      infotext="Hypertile U-Net")
    hypertile_enable_unet_secondpass: bool = opt(
        False, "Enable Hypertile U-Net for hires fix second pass", OPTIMIZATIONS,
        infotext="Hypertile U-Net second pass")
    hypertile_max_depth_unet: int = opt(3, "Hypertile U-Net max depth", OPTIMIZATIONS,
                                        infotext="Hypertile U-Net max depth",
                                        minimum=0, maximum=3)
    hypertile_max_tile_unet: int = opt(256, "Hypertile U-Net max tile size", OPTIMIZATIONS,
                                       infotext="Hypertile U-Net max tile size",
                                       minimum=0, maximum=512)
    hypertile_swap_size_unet: int = opt(3, "Hypertile U-Net swap size", OPTIMIZATIONS,
                                        infotext="Hypertile U-Net swap size",
                                        minimum=0, maximum=64)
    hypertile_enable_vae: bool = opt(False, "Enable Hypertile VAE", OPTIMIZATIONS,
                                     infotext="Hypertile VAE")
    hypertile_max_depth_vae: int = opt(3, "Hypertile VAE max depth", OPTIMIZATIONS,
                                       infotext="Hypertile VAE max depth", minimum=0, maximum=3)
    hypertile_max_tile_vae: int = opt(128, "Hypertile VAE max tile size", OPTIMIZATIONS,
                                      infotext="Hypertile VAE max tile size",
                                      minimum=0, maximum=512)
    hypertile_swap_size_vae: int = opt(3, "Hypertile VAE swap size", OPTIMIZATIONS,
                                       infotext="Hypertile VAE swap size", minimum=0, maximum=64)
