"""Prompts from file or textbox: one job per line.

A1111's script (docs/a1111-semantics.md, "Built-in scripts").

A line is either a prompt (put before or after the UI prompt) or a list of
`--name value` options (`--prompt "a cat" --steps 10 --seed 5`) that replace the
request's fields for that line. Unknown options are an error naming the line.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass

from modules.scripts.args import arg
from modules.scripts.base import Script, ScriptProcessing
from modules.scripts.builtin import common

OPTION_TYPES = {
    "prompt": str, "negative_prompt": str, "sampler_name": str, "scheduler": str,
    "seed": int, "subseed": int, "subseed_strength": float, "steps": int, "cfg_scale": float,
    "width": int, "height": int, "batch_size": int, "n_iter": int,
    "seed_resize_from_w": int, "seed_resize_from_h": int, "denoising_strength": float,
}


def parse_line(line: str, number: int) -> dict:
    """The fields one `--name value ...` line sets (values converted to their type)."""
    tokens = shlex.split(line)
    fields: dict = {}
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--"):
            raise ValueError(f"Prompts from file, line {number}: expected --option, got {token!r}")
        name = token[2:].replace("-", "_")
        if name not in OPTION_TYPES:
            raise ValueError(f"Prompts from file, line {number}: unknown option --{name} "
                             f"(known: {', '.join(sorted(OPTION_TYPES))})")
        if not tokens:
            raise ValueError(f"Prompts from file, line {number}: --{name} needs a value")
        value = tokens.pop(0)
        try:
            fields[name] = OPTION_TYPES[name](value)
        except ValueError as error:
            raise ValueError(f"Prompts from file, line {number}: --{name}: {error}") from error
    return fields


class PromptsFromFile(Script):
    @dataclass
    class Args:
        checkbox_iterate: bool = arg(False, "Iterate seed every line")
        checkbox_iterate_batch: bool = arg(False, "Use same random seed for all lines")
        prompt_position: str = arg("start", "Insert prompts at the", choices=("start", "end"))
        prompt_txt: str = arg("", "List of prompt inputs")

    def title(self) -> str:
        return "Prompts from file or textbox"

    def jobs(self, params, args: "PromptsFromFile.Args") -> list[tuple]:
        """(params, whether the line set its own seed) per non-empty line."""
        lines = [line.strip() for line in args.prompt_txt.splitlines()]
        jobs = []
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            if line.startswith("--"):
                fields = parse_line(line, number)
            elif not params.prompt:
                fields = {"prompt": line}
            elif args.prompt_position == "start":
                fields = {"prompt": f"{line} {params.prompt}"}
            else:
                fields = {"prompt": f"{params.prompt} {line}"}
            jobs.append((dataclasses.replace(params, **fields), "seed" in fields))
        return jobs

    def run(self, p: ScriptProcessing, args: "PromptsFromFile.Args"):
        params = p.params
        if args.checkbox_iterate or args.checkbox_iterate_batch:
            params = common.fixed_seed_params(params)
        result = common.empty_result()
        offset = 0
        for job, own_seed in self.jobs(params, args):
            if args.checkbox_iterate and not own_seed:
                job = dataclasses.replace(job, seed=params.seed + offset)
            job.validate()
            common.append(result, (yield from p.process(job)))
            offset += job.batch_size * job.n_iter
            if result.interrupted:
                break
        return result
