"""X/Y/Z plot: one image per combination of up to three axes, in a labelled grid.

Every cell is a full normal job (`p.process`) on a copy of the request with the
axes' values applied, so each cell's image carries its own infotext. The grid is
image 0 of the result; its infotext is the first cell's plus A1111's `Script`,
`X Type`, `X Values`, ... keys. Unless "Keep -1 for seeds" is set, a random seed is
fixed once so every cell starts from the same noise. All cell requests are built and
checked before the first one runs, so a bad value fails at once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from modules.errors import ParamsError
from modules.imaging.grid_labels import join_with_titles, labelled_grid
from modules.pipeline.limits import PixelBudget, largest_image
from modules.scripts.args import arg
from modules.scripts.base import Script, ScriptProcessing
from modules.scripts.builtin import common
from modules.scripts.builtin.xyz_axes import (
    AXIS_LABELS,
    Axis,
    axis_choices,
    find_axis,
    format_value,
    join_values,
    parse_values,
)

MAX_CELLS = 1024


def check_values(runtime, axis: Axis, values: list) -> None:
    """Names that must exist (samplers, schedulers, checkpoints) are checked up front."""
    from modules.sampling import registry as R

    for value in values:
        try:
            if axis.label == "Sampler":
                R.resolve_sampler(value, "Automatic")
            elif axis.label == "Schedule type":
                R.resolve_sampler("Euler", value)
            elif axis.label == "Checkpoint name":
                runtime.models.find(value)
        except Exception as error:
            raise ValueError(f"X/Y/Z plot: {axis.label} value {value!r}: {error}") from error


class XYZPlot(Script):
    @dataclass
    class Args:  # A1111's order, so clients' positional script_args keep working
        x_type: Any = arg("Nothing", "X type")  # a label or A1111's axis index
        x_values: str = arg("", "X values")
        x_values_dropdown: list = arg([], "X values (list)")  # used when not empty
        y_type: Any = arg("Nothing", "Y type")
        y_values: str = arg("", "Y values")
        y_values_dropdown: list = arg([], "Y values (list)")
        z_type: Any = arg("Nothing", "Z type")
        z_values: str = arg("", "Z values")
        z_values_dropdown: list = arg([], "Z values (list)")
        draw_legend: bool = arg(True, "Draw legend")
        include_lone_images: bool = arg(False, "Include Sub Images")
        include_sub_grids: bool = arg(False, "Include Sub Grids")
        no_fixed_seeds: bool = arg(False, "Keep -1 for seeds")
        vary_seeds_x: bool = arg(False, "Vary seeds for X")
        vary_seeds_y: bool = arg(False, "Vary seeds for Y")
        vary_seeds_z: bool = arg(False, "Vary seeds for Z")
        margin_size: int = arg(0, "Grid margins (px)", minimum=0, maximum=500)
        csv_mode: bool = arg(False, "Use text inputs instead of dropdowns")

    axis_labels = AXIS_LABELS

    def title(self) -> str:
        return "X/Y/Z plot"

    # UI hints, read by the web UI's script controls (no UI library here).
    def ui_dropdowns(self) -> dict[str, tuple[str, ...]]:
        """The axis types are shown as dropdowns of the axis names. They are not
        `arg(choices=...)`: the API also takes A1111's axis indices there."""
        return {name: AXIS_LABELS for name in ("x_type", "y_type", "z_type")}

    def ui_value_helpers(self) -> dict[str, str]:
        """Values box -> the type field whose valid values its 📒 button fills in."""
        return {"x_values": "x_type", "y_values": "y_type", "z_values": "z_type"}

    def value_choices(self, runtime, axis_type) -> list[str]:
        """Every valid value of the chosen axis type ([] for free values or a bad type)."""
        try:
            return axis_choices(find_axis(axis_type).label, runtime)
        except ValueError:
            return []

    def join_choices(self, values: list[str]) -> str:
        """Values as the values box takes them back."""
        return join_values(values)

    def cells(self, params, axes: list[tuple[Axis, list]]) -> list:
        """Cell requests in z, y, x order (x fastest), all validated."""
        (ax, xs), (ay, ys), (az, zs) = axes
        cells = []
        for z in zs:
            for y in ys:
                for x in xs:
                    cell = az.apply(params, z, zs[0])
                    cell = ay.apply(cell, y, ys[0])
                    cell = ax.apply(cell, x, xs[0])
                    cell = dataclasses.replace(cell, override_settings=dict(cell.override_settings))
                    cell.validate()
                    cells.append(cell)
        return cells

    def axes(self, runtime, args: "XYZPlot.Args") -> list[tuple[Axis, list]]:
        """(axis, values) for X, Y and Z, every value checked."""
        if args.vary_seeds_x or args.vary_seeds_y or args.vary_seeds_z:
            raise ValueError("X/Y/Z plot: vary_seeds_x/y/z are not supported yet")
        axes = []
        for kind, text, listed in ((args.x_type, args.x_values, args.x_values_dropdown),
                                   (args.y_type, args.y_values, args.y_values_dropdown),
                                   (args.z_type, args.z_values, args.z_values_dropdown)):
            axis = find_axis(kind)
            values = ([axis.kind(v) for v in listed] if listed and axis.label != "Nothing"
                      else parse_values(axis, text))
            check_values(runtime, axis, values)
            axes.append((axis, values))
        return axes

    def check(self, runtime, params, args: "XYZPlot.Args") -> None:
        axes = self.axes(runtime, args)
        count = math.prod(len(values) for _, values in axes)
        if count > MAX_CELLS:  # counted before a single cell is built
            raise ValueError(f"X/Y/Z plot: {count} cells; at most {MAX_CELLS} are allowed")
        budget = PixelBudget.from_args(runtime.args)
        _, width, height = largest_image(params)
        total = count * width * height * params.batch_size * params.n_iter
        if total > budget.per_request:  # the whole plot is one request, and one grid
            raise ParamsError("script_args", f"the plot makes {count} cells of {width}x{height} "
                                             f"({total:,} pixels), over the limit of "
                                             f"{budget.per_request:,} pixels per request "
                                             f"(--max-pixels-per-request)")
        self.cells(params, axes)  # every cell validated

    def run(self, p: ScriptProcessing, args: "XYZPlot.Args"):
        params = p.params if args.no_fixed_seeds else common.fixed_seed_params(p.params)
        axes = self.axes(p.runtime, args)
        cells = self.cells(params, axes)
        result = common.empty_result()
        for cell in cells:
            common.append(result, (yield from p.process(cell)), first_only=True)
            if result.interrupted:
                return result
        grid = self.grid(result.images, axes, args)
        infotext = common.add_infotext_params(result.infotexts[0], self.infotext_keys(axes))
        common.save_grid(p.runtime, params, grid, infotext,
                         kind="img2img" if p.is_img2img else "txt2img")
        first = result
        if not args.include_lone_images:
            result = _without_images(result)
        common.put_grid_first(result, grid, infotext, like=first)
        return result

    def grid(self, images: list, axes: list[tuple[Axis, list]], args: "XYZPlot.Args"):
        (ax, xs), (ay, ys), (az, zs) = axes
        legend = args.draw_legend
        x_labels = [format_value(ax, x) for x in xs] if legend and ax.label != "Nothing" else []
        y_labels = [format_value(ay, y) for y in ys] if legend and ay.label != "Nothing" else []
        per_z = len(xs) * len(ys)
        grids = []
        for k in range(len(zs)):
            block = images[k * per_z:(k + 1) * per_z]
            rows = [block[r * len(xs):(r + 1) * len(xs)] for r in range(len(ys))]
            grids.append(labelled_grid(rows, x_labels=x_labels, y_labels=y_labels,
                                       margin=args.margin_size))
        if len(grids) == 1:
            return grids[0]
        titles = [format_value(az, z) for z in zs] if legend else [""] * len(zs)
        return join_with_titles(grids, titles, margin=args.margin_size)

    def infotext_keys(self, axes: list[tuple[Axis, list]]) -> dict[str, str]:
        keys = {"Script": self.title()}
        for letter, (axis, values) in zip("XYZ", axes):
            if axis.label != "Nothing":
                keys[f"{letter} Type"] = axis.label
                keys[f"{letter} Values"] = ", ".join(str(v) for v in values)
        return keys


def _without_images(result):
    """The result's warnings and extras only (the cells' images are not returned)."""
    empty = common.empty_result()
    empty.warnings, empty.extra = result.warnings, result.extra
    empty.saved_paths, empty.interrupted = result.saved_paths, result.interrupted
    return empty
