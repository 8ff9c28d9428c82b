"""Built-in selectable scripts: Prompt matrix, Prompts from file or textbox, X/Y/Z plot.

They use exactly the public Script API extensions use. Loopback and SD upscale
(img2img-only) are not built yet.
"""

from __future__ import annotations


def builtin_scripts() -> list:
    from modules.scripts.builtin.prompt_matrix import PromptMatrix
    from modules.scripts.builtin.prompts_from_file import PromptsFromFile
    from modules.scripts.builtin.xyz_plot import XYZPlot

    return [PromptMatrix(), PromptsFromFile(), XYZPlot()]
