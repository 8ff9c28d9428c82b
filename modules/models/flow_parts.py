"""Separate text encoders and VAEs for SD3 / Flux files that lack them, found and chosen.

Users keep the parts of these models as separate files, as Forge and ComfyUI users do:
`clip_l.safetensors`, `clip_g.safetensors`, `t5xxl_fp16.safetensors` (or `_fp8_e4m3fn`)
in `models/text_encoder/` (`--text-encoder-dir`; A1111's `models/CLIP/` is read too) and
`ae.safetensors` in `models/VAE/`. Each file is classified by its header
(`flow_detection.classify_part`), never by its name.

When a checkpoint lacks a part, the part comes from, in order: the files named by the
`forge_additional_modules` setting (Forge's option: names of files inside those folders;
a path outside them, or a name that matches no file, is refused), then the files of the
right kind whose shapes fit the model, preferring a name that says the family ("ae" /
"flux" for Flux's VAE, "sd3" for SD3's: the two VAEs have the same shapes) and
16-bit files over fp8 ones. A part that cannot be found is one error naming what to put
where. The parts used are listed in the infotext as Forge does:
`Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp16`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from modules.models.errors import ModelLoadError
from modules.models.flow_detection import Part, classify_part
from modules.models.flow_families import ENCODER_LABELS, FlowFamily
from modules.models.folders import walk_files
from modules.models.safetensors_io import read_safetensors_header
from modules.paths import inside

log = logging.getLogger(__name__)

MODULES_SETTING = "forge_additional_modules"
PART_SUFFIXES = (".safetensors", ".sft")
KIND_ORDER = ("vae", "clip_l", "clip_g", "t5xxl")
VAE_HINTS = {"flux": ("ae", "flux"), "sd3": ("sd3", "sd35", "sd3.5")}


@dataclass(frozen=True)
class PartFile:
    """One separate file: where it is and what its header says it holds."""

    path: Path
    part: Part

    @property
    def kind(self) -> str:
        return self.part.kind

    @property
    def name(self) -> str:
        """The file name without its suffix, as infotext names it ("t5xxl_fp16")."""
        return self.path.stem


def module_folders(paths) -> tuple[Path, ...]:
    """The folders that parts may come from: the text-encoder folders, then the VAE folder."""
    return (*paths.text_encoder_dirs, paths.vae_dir)


def list_parts(folders: Iterable[Path]) -> list[PartFile]:
    """Every file in `folders` that holds a flow-model part (others are skipped)."""
    found: list[PartFile] = []
    for folder in folders:
        for path in walk_files(folder, PART_SUFFIXES):
            part = _classify(path)
            if part is not None:
                found.append(PartFile(path=path, part=part))
    return found


def _classify(path: Path) -> Part | None:
    try:
        header = read_safetensors_header(path)
        return classify_part(header.tensors, header.metadata, path=str(path))
    except ModelLoadError as error:
        log.info("Skipping %s: %s", path.name, error.reason)
        return None


def resolve_modules(names: Sequence[str], folders: Sequence[Path]) -> list[PartFile]:
    """The parts the setting names; names resolve inside `folders` only (else refused)."""
    available = list_parts(folders)
    chosen = []
    for name in names:
        chosen.append(_by_name(str(name), available, folders))
    return chosen


def _by_name(name: str, available: list[PartFile], folders: Sequence[Path]) -> PartFile:
    pure = PurePath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise ModelLoadError(MODULES_SETTING, f"{name[:100]!r}: give a file name inside "
                                              f"{_folder_names(folders)}, not a path")
    for part in available:
        relative = [str(part.path.relative_to(f)) for f in folders if inside(f, part.path)]
        if name in (part.path.name, part.path.stem, *relative):
            return part
    known = ", ".join(part.path.name for part in available) or "none"
    raise ModelLoadError(MODULES_SETTING, f"{name[:100]!r} is not a text encoder or VAE in "
                                          f"{_folder_names(folders)} (found: {known})")


def _folder_names(folders: Sequence[Path]) -> str:
    return " or ".join(f"{folder.parent.name}/{folder.name}/" for folder in folders)


def fits(family: FlowFamily, part: PartFile) -> bool:
    """Whether the part's shapes suit the family's diffusion model."""
    diffusion, config = family.diffusion, part.part.config
    if part.kind == "vae":
        return config.embed_dim == family.vae.embed_dim
    if part.kind == "t5xxl":
        width = getattr(diffusion, "context_in_dim", getattr(diffusion, "context_in_channels", 0))
        return config.hidden_size == width
    if family.architecture == "flux":
        return part.kind == "clip_l" and config.hidden_size == diffusion.vec_in_dim
    return config.hidden_size < diffusion.adm_in_channels


def pick_parts(family: FlowFamily, missing: Sequence[str], *, chosen: Sequence[PartFile],
               available: Sequence[PartFile], folders: Sequence[Path],
               path: str) -> dict[str, PartFile]:
    """A part for each `missing` kind: the chosen file of that kind, else the best fit.
    SD3's T5 is optional (`optional_parts`): without one it is left out, not an error."""
    picked: dict[str, PartFile] = {}
    for kind in missing:
        named = [part for part in chosen if part.kind == kind]
        if named:
            if not fits(family, named[0]):
                raise ModelLoadError(path, f"{named[0].path.name} ({MODULES_SETTING}) does not "
                                           f"fit {family.label}")
            picked[kind] = named[0]
            continue
        candidates = [part for part in available if part.kind == kind and fits(family, part)]
        if not candidates and kind in optional_parts(family):
            log.warning("%s: no T5-XXL text encoder found; %s runs without it (zeros in its "
                        "place), with weaker prompt following", path, family.label)
            continue
        if not candidates:
            raise ModelLoadError(path, missing_part_message(family, kind, folders))
        picked[kind] = min(candidates, key=lambda part: _preference(part, family))
    return picked


def optional_parts(family: FlowFamily) -> frozenset[str]:
    """Parts a family runs without: SD3's T5 (its context then has zeros there)."""
    return frozenset({"t5xxl"}) if family.architecture == "sd3" else frozenset()


def _preference(part: PartFile, family: FlowFamily) -> tuple[int, int, str]:
    name = part.path.name.lower()
    hinted = part.kind != "vae" or any(hint in name for hint in VAE_HINTS[family.architecture])
    return (0 if hinted else 1, 1 if "fp8" in name or "e4m3" in name else 0, name)


def missing_part_message(family: FlowFamily, kind: str, folders: Sequence[Path]) -> str:
    """E.g. "Flux.1 dev needs a T5-XXL text encoder in models/text_encoder/ ..."."""
    if kind == "vae":
        where = folders[-1] if folders else Path("models/VAE")
        what, example = "16-channel VAE", "ae.safetensors"
    else:
        where = folders[0] if folders else Path("models/text_encoder")
        what = f"{ENCODER_LABELS[kind]} text encoder"
        example = {"t5xxl": "t5xxl_fp16.safetensors"}.get(kind, f"{kind}.safetensors")
    return (f"{family.label} needs a {what} in {where.parent.name}/{where.name}/ (e.g. "
            f"{example}); the checkpoint has none that fits (or choose one with the "
            f"{MODULES_SETTING} setting)")


def module_infotext(parts: Iterable[PartFile]) -> dict[str, str]:
    """Forge's infotext fields for the separate parts a model was assembled with."""
    ordered = sorted(parts, key=lambda part: KIND_ORDER.index(part.kind))
    return {f"Module {index}": part.name for index, part in enumerate(ordered, start=1)}
