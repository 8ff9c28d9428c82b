"""Prompt matrix: every combination of the `|`-separated parts of a prompt.

A1111's script (docs/a1111-semantics.md, "Built-in scripts").

"a cat|red|big" gives 4 images: "a cat", "a cat, red", "a cat, big",
"a cat, red, big", all with the same seed (or consecutive seeds), and a grid labelled
with the parts each column (first half of the options) and row (second half) adds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from modules.imaging.grid_labels import labelled_grid
from modules.scripts.args import arg
from modules.scripts.base import Script, ScriptProcessing
from modules.scripts.builtin import common

MAX_OPTIONS = 10  # 2**10 images


def combinations(text: str, *, at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(options, prompts): prompt i holds the options whose bit is set in i."""
    parts = [part.strip() for part in text.split("|")]
    base, options = (parts[-1], parts[:-1]) if at_start else (parts[0], parts[1:])
    prompts = []
    for i in range(2 ** len(options)):
        chosen = [opt for n, opt in enumerate(options) if i >> n & 1]
        pieces = [*chosen, base] if at_start else [base, *chosen]
        prompts.append(delimiter.join(piece for piece in pieces if piece))
    return options, prompts


def axis_labels(options: list[str], bits: range) -> list[str]:
    labels = []
    for value in range(2 ** len(bits)):
        marks = [("+" if value >> k & 1 else "-") + options[n] for k, n in enumerate(bits)]
        labels.append(" ".join(marks))
    return labels


class PromptMatrix(Script):
    @dataclass
    class Args:
        put_at_start: bool = arg(False, "Put variable parts at start of prompt")
        different_seeds: bool = arg(False, "Use different seed for each picture")
        prompt_type: str = arg("positive", "Select prompt", choices=("positive", "negative"))
        variations_delimiter: str = arg("comma", "Select joining char", choices=("comma", "space"))
        margin_size: int = arg(0, "Grid margins (px)", minimum=0, maximum=500)

    def title(self) -> str:
        return "Prompt matrix"

    def run(self, p: ScriptProcessing, args: "PromptMatrix.Args"):
        params = common.fixed_seed_params(p.params)
        field = "prompt" if args.prompt_type == "positive" else "negative_prompt"
        delimiter = ", " if args.variations_delimiter == "comma" else " "
        options, prompts = combinations(getattr(params, field), at_start=args.put_at_start,
                                        delimiter=delimiter)
        if len(options) > MAX_OPTIONS:
            raise ValueError(f"Prompt matrix: {len(options)} variable parts; at most "
                             f"{MAX_OPTIONS} are allowed")
        result = common.empty_result()
        for i, text in enumerate(prompts):
            seed = params.seed + i if args.different_seeds else params.seed
            cell = dataclasses.replace(params, **{field: text}, seed=seed, batch_size=1, n_iter=1)
            common.append(result, (yield from p.process(cell)))
            if result.interrupted:
                return result
        columns = range(0, (len(options) + 1) // 2)
        rows = range(len(columns), len(options))
        width = 2 ** len(columns)
        cells = [result.images[r * width:(r + 1) * width] for r in range(2 ** len(rows))]
        grid = labelled_grid(cells, x_labels=axis_labels(options, columns) if options else [],
                             y_labels=axis_labels(options, rows) if len(rows) else [],
                             margin=args.margin_size)
        infotext = common.add_infotext_params(result.infotexts[0], {"Script": self.title()})
        common.save_grid(p.runtime, params, grid, infotext, kind="img2img" if p.is_img2img
                         else "txt2img")
        common.put_grid_first(result, grid, infotext)
        return result
