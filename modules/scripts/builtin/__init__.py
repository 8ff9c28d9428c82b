"""Built-in selectable scripts.

txt2img and img2img: Prompt matrix, Prompts from file or textbox, X/Y/Z plot.
img2img only: Loopback, Outpainting mk2, Poor man's outpainting, SD upscale.
They use exactly the public Script API extensions use.
"""

from __future__ import annotations


def builtin_scripts() -> list:
    from modules.scripts.builtin.loopback import Loopback
    from modules.scripts.builtin.outpainting_mk2 import OutpaintingMk2
    from modules.scripts.builtin.poor_mans_outpainting import PoorMansOutpainting
    from modules.scripts.builtin.prompt_matrix import PromptMatrix
    from modules.scripts.builtin.prompts_from_file import PromptsFromFile
    from modules.scripts.builtin.sd_upscale import SDUpscale
    from modules.scripts.builtin.xyz_plot import XYZPlot

    return [PromptMatrix(), PromptsFromFile(), XYZPlot(), Loopback(), OutpaintingMk2(),
            PoorMansOutpainting(), SDUpscale()]
