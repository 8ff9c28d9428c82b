"""Settings of the built-in tools, A1111's names and defaults: HyperTile (A1111 1.10's
"Optimizations" section; the "Hypertile" script reads them, `modules/nn/hypertile.py`)
the interrogators (A1111's "Interrogate" section, `modules/upscaling/interrogate/`) and
face restoration (A1111's "Face restoration" section, docs/face_restoration.md)."""

from __future__ import annotations

from dataclasses import dataclass

from modules.settings.declare import FACE_RESTORATION, INTERROGATE, OPTIMIZATIONS, opt

# The face restorers `modules/upscaling/face_registry.py` knows.
FACE_RESTORERS = ("CodeFormer", "GFPGAN", "RestoreFormer", "RestoreFormer++")
# The CLIP interrogator's word lists (modules/assets/interrogate/), which it may skip.
INTERROGATE_CATEGORIES = ("artists", "flavors", "mediums", "movements")


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
    # Interrogate (CLIP interrogator and DeepBooru)
    interrogate_keep_models_in_memory: bool = opt(False, "Keep models in VRAM", INTERROGATE)
    interrogate_return_ranks: bool = opt(
        False, "Include ranks of model tags matches in results", INTERROGATE)
    interrogate_clip_num_beams: int = opt(1, "BLIP: num_beams", INTERROGATE, minimum=1,
                                          maximum=16)
    interrogate_clip_min_length: int = opt(24, "BLIP: minimum description length",
                                           INTERROGATE, minimum=1, maximum=128)
    interrogate_clip_max_length: int = opt(48, "BLIP: maximum description length",
                                           INTERROGATE, minimum=1, maximum=256)
    interrogate_clip_dict_limit: int = opt(
        1500, "CLIP: maximum number of lines in text file (0 = no limit)", INTERROGATE,
        minimum=0, maximum=100_000)
    interrogate_clip_skip_categories: tuple = opt(
        (), "CLIP: skip inquire categories", INTERROGATE, choices=INTERROGATE_CATEGORIES)
    interrogate_deepbooru_score_threshold: float = opt(
        0.5, "deepbooru: score threshold", INTERROGATE, minimum=0.0, maximum=1.0)
    deepbooru_sort_alpha: bool = opt(True, "deepbooru: sort tags alphabetically", INTERROGATE)
    deepbooru_use_spaces: bool = opt(True, "deepbooru: use spaces in tags", INTERROGATE)
    deepbooru_escape: bool = opt(True, "deepbooru: escape (\\) brackets", INTERROGATE)
    deepbooru_filter_tags: str = opt("", "deepbooru: filter out those tags (comma-separated)",
                                     INTERROGATE)
    # Face restoration (modules/upscaling/face_registry.py; "Face restoration" infotext)
    face_restoration: bool = opt(False, "Restore faces", FACE_RESTORATION)
    face_restoration_model: str = opt("CodeFormer", "Face restoration model",
                                      FACE_RESTORATION, choices=FACE_RESTORERS)
    code_former_weight: float = opt(0.5, "CodeFormer weight (0 = maximum effect, "
                                    "1 = minimum effect)", FACE_RESTORATION,
                                    minimum=0.0, maximum=1.0)
