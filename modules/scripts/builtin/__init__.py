"""Built-in selectable scripts.

txt2img and img2img: Prompt matrix, Prompts from file or textbox, X/Y/Z plot.
img2img only: Loopback, Outpainting mk2, Poor man's outpainting, SD upscale.
They use exactly the public Script API extensions use.
"""

from __future__ import annotations


def builtin_scripts() -> list:
    from modules.scripts.builtin.cfg_rescale import CFGRescale
    from modules.scripts.builtin.deep_shrink import DeepShrink
    from modules.scripts.builtin.dynamic_thresholding import DynamicThresholding
    from modules.scripts.builtin.freeu import FreeU
    from modules.scripts.builtin.hypertile import Hypertile
    from modules.scripts.builtin.loopback import Loopback
    from modules.scripts.builtin.outpainting_mk2 import OutpaintingMk2
    from modules.scripts.builtin.pag import PerturbedAttentionGuidance
    from modules.scripts.builtin.poor_mans_outpainting import PoorMansOutpainting
    from modules.scripts.builtin.prompt_matrix import PromptMatrix
    from modules.scripts.builtin.prompts_from_file import PromptsFromFile
    from modules.scripts.builtin.sag import SelfAttentionGuidance
    from modules.scripts.builtin.sd_upscale import SDUpscale
    from modules.scripts.builtin.soft_inpainting import SoftInpainting
    from modules.scripts.builtin.tiled_diffusion import TiledDiffusion
    from modules.scripts.builtin.xyz_plot import XYZPlot

    # CFG-step tools first: their guidance hooks replace the combination (dynamic
    # thresholding recomputes it) before SAG / PAG add their terms.
    return [PromptMatrix(), PromptsFromFile(), XYZPlot(), Loopback(), OutpaintingMk2(),
            PoorMansOutpainting(), SDUpscale(), DynamicThresholding(), CFGRescale(),
            FreeU(), DeepShrink(), Hypertile(),
            SelfAttentionGuidance(), PerturbedAttentionGuidance(), TiledDiffusion(),
            SoftInpainting()]
