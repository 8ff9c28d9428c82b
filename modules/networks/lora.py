"""`<lora:...>` prompt tags -> typed weight patches on a clone of the model's patcher.

Tag syntax (docs/a1111-semantics.md, "Extra-network tags"): `<lora:NAME:TE[:UNET[:DYN]]>` or named
`te=`, `unet=`, `dyn=`; `<lyco:...>` is the same thing. TE defaults to 1, UNET to TE. Negative
multipliers are allowed. Several tags give several networks, summed per layer.

Nothing here raises on a user's file: an unknown name, an unreadable file, a file for
another base model or with layers of the wrong shape becomes a warning that names
the file and what was skipped, and generation goes on with whatever did fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modules.conditioning.prompt_parser import ExtraNetworkTag
from modules.models.patcher import ModelPatcher, WeightPatch
from modules.networks.library import LoraLibrary, NetworkOnDisk
from modules.networks.names import NameMap

LORA_TAGS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraRequest:
    """One network asked for by a prompt: the name as written, and its multipliers."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


def parse_lora_tag(tag: ExtraNetworkTag) -> LoraRequest:
    """A1111's reading of the tag's arguments; raises ValueError on bad numbers."""
    if not tag.positional or not tag.positional[0]:
        raise ValueError(f"<{tag.name}:...> needs a network name")
    args = tag.positional
    te = float(args[1]) if len(args) > 1 else 1.0
    te = float(tag.named.get("te", te))
    unet = float(args[2]) if len(args) > 2 else te
    unet = float(tag.named.get("unet", unet))
    dyn = int(args[3]) if len(args) > 3 else None
    dyn = int(tag.named["dyn"]) if "dyn" in tag.named else dyn
    return LoraRequest(name=args[0], te=te, unet=unet, dyn=dyn)


@dataclass
class LoraActivation:
    """The result of applying a job's LoRA tags."""

    patcher: ModelPatcher
    hashes: list[tuple[str, str]] = field(default_factory=list)  # (name as written, short hash)
    warnings: list[str] = field(default_factory=list)

    def infotext_value(self) -> str | None:
        """`Lora hashes`: "name: hash, name2: hash2", names stripped of ':' and ','."""
        items = [f"{name.replace(':', '').replace(',', '')}: {short}"
                 for name, short in self.hashes]
        return ", ".join(items) or None


def name_map(patcher: ModelPatcher) -> NameMap:
    return patcher.memo("lora_name_map", lambda: NameMap(model=patcher.model))


def activate_loras(patcher: ModelPatcher, library: LoraLibrary,
                   tags: list[ExtraNetworkTag]) -> LoraActivation:
    """A clone of `patcher` carrying every network the tags name (that could be read)."""
    result = LoraActivation(patcher=patcher)
    names = name_map(patcher)
    patches: list[WeightPatch] = []
    key = []
    for tag in tags:
        try:
            request = parse_lora_tag(tag)
        except ValueError as error:
            result.warnings.append(f"LoRA tag <{tag.name}:{':'.join(tag.items)}> ignored: {error}")
            continue
        entry = library.find(request.name)
        if entry is None:
            result.warnings.append(f"LoRA '{request.name}' not found in {library.folder}")
            continue
        found = _patches_for(entry, request, library, names, result.warnings)
        if found is None:
            continue
        stamp, file_patches = found
        patches += file_patches
        key.append((stamp, request.te, request.unet, request.dyn))
        result.hashes.append((request.name, library.shorthash(entry)))
    result.patcher = patcher.with_patches(tuple(patches), tuple(key))
    return result


def _patches_for(entry: NetworkOnDisk, request: LoraRequest, library: LoraLibrary,
                 names: NameMap, warnings: list[str]):
    """(file stamp, patches) for one network, or None when the file cannot be used."""
    label = f"LoRA '{request.name}' ({entry.path.name})"
    try:
        stamp, tensors = library.read(entry)
    except Exception as error:  # any damage in a user's file is a warning, never a crash
        warnings.append(f"{label} could not be read and was skipped: {error}")
        return None
    patches, unmapped = [], []
    for module_name, group in tensors.groups.items():
        target = names.get(module_name)
        if target is None:
            unmapped.append(module_name)
            continue
        strength = request.te if target.is_text else request.unet
        patches.append(WeightPatch(component=target.component, path=target.path,
                                   tensors=group, strength=strength, dyn=request.dyn,
                                   source=entry.path.name, name=module_name,
                                   rows=None if target.rows is None else slice(*target.rows),
                                   swap_halves=target.swap_halves))
    total = len(tensors.groups)
    if not patches:
        warnings.append(f"{label}: none of its {total} modules match this model "
                        f"(a LoRA for another base model?); skipped")
        return None
    if unmapped:
        warnings.append(f"{label}: {len(unmapped)} of {total} modules do not match this model "
                        f"and were skipped, e.g. {', '.join(sorted(unmapped)[:3])}")
    if tensors.unknown_keys:
        warnings.append(f"{label}: {len(tensors.unknown_keys)} keys not understood, "
                        f"e.g. {', '.join(tensors.unknown_keys[:3])}")
    return stamp, patches


def merge_warnings(activation: LoraActivation) -> list[str]:
    """Warnings for layers whose tensors did not fit (found when the weights are merged)."""
    by_file: dict[str, list[str]] = {}
    for patch, reason in activation.patcher.merged().skipped:
        by_file.setdefault(patch.source, []).append(f"{patch.name}: {reason}")
    return [f"LoRA file {source}: {len(items)} layers skipped ({'; '.join(items[:3])})"
            for source, items in by_file.items()]
