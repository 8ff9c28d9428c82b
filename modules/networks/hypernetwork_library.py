"""The user's hypernetwork files, and `<hypernet:NAME:MULT>` tags -> one job's context transform.

As in A1111 (docs/a1111-semantics.md, "Network libraries"): every `.pt` under the hypernetwork
folder (`models/hypernetworks/`, `--hypernetwork-dir`) is a hypernetwork named by its file
stem; MULT defaults to 1. Names are only looked up in this listing, never joined into
a path, so a prompt cannot reach a file outside the folder. Several tags stack in
prompt order.

Nothing here raises on a user's prompt or file: an unknown name, a bad multiplier, an
unreadable file, or one with no MLP for any attention width of the model becomes a
warning naming the file and the reason, and generation goes on without it.

Infotext: A1111 writes nothing for hypernetworks beyond the tag kept in the prompt (its
`Hypernet` / `Hypernet strength` keys are legacy and read only; writing them as well
would make a pasted infotext apply the hypernetwork twice), so neither do we.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.conditioning.prompt_parser import ExtraNetworkTag
from modules.networks.files import file_stamp
from modules.networks.hypernetwork import Hypernetwork, HypernetworkStack
from modules.networks.hypernetwork_files import read_hypernetwork
from modules.networks.library import walk_files
from modules.nn.configs import UNetConfig

HYPERNET_TAG = "hypernet"
HYPERNETWORK_SUFFIXES = (".pt",)


@dataclass(frozen=True)
class HypernetworkOnDisk:
    """One hypernetwork file as the listing knows it."""

    name: str
    path: Path


@dataclass(frozen=True)
class AttentionWidths:
    """Token widths the U-Net's attention layers compute keys and values from."""

    pixels: frozenset[int]  # self-attention: the channels of each level with a transformer
    context: int  # cross-attention: the text context width

    @staticmethod
    def of(config: UNetConfig) -> "AttentionWidths":
        levels = [config.model_channels * mult
                  for mult, depth in zip(config.channel_mult, config.transformer_depth)
                  if depth > 0]
        if config.transformer_depth_middle > 0:
            levels.append(config.model_channels * config.channel_mult[-1])
        return AttentionWidths(pixels=frozenset(levels), context=config.context_dim)

    @property
    def all(self) -> frozenset[int]:
        return self.pixels | {self.context}


class HypernetworkLibrary:
    """Lists and reads hypernetwork files; thread-safe; one per runtime."""

    def __init__(self, *, folder: Path, cache_size: int = 4) -> None:
        self.folder = folder
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._listing: list[HypernetworkOnDisk] | None = None
        self._loaded: OrderedDict[tuple, Hypernetwork] = OrderedDict()

    def list(self) -> list[HypernetworkOnDisk]:
        with self._lock:
            if self._listing is None:
                # A1111 refuses the name "None" (it means "no hypernetwork" in its settings).
                self._listing = [HypernetworkOnDisk(name=path.stem, path=path)
                                 for path in walk_files(self.folder, HYPERNETWORK_SUFFIXES)
                                 if path.stem != "None"]
            return list(self._listing)

    def refresh(self) -> None:
        with self._lock:
            self._listing = None

    def find(self, name: str) -> HypernetworkOnDisk | None:
        return next((entry for entry in self.list() if entry.name == name), None)

    def read(self, entry: HypernetworkOnDisk, device: torch.device) -> Hypernetwork:
        """The file's hypernetwork on `device`, from the cache while the file is unchanged."""
        key = (file_stamp(entry.path), str(device))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        network = read_hypernetwork(entry.path, name=entry.name).to(device)
        with self._lock:
            self._loaded[key] = network
            while len(self._loaded) > max(self.cache_size, 1):
                self._loaded.popitem(last=False)
        return network


@dataclass
class HypernetworkActivation:
    """A job's hypernetworks: the transform for the U-Net (None when there is none) and warnings."""

    transform: HypernetworkStack | None = None
    warnings: list[str] = field(default_factory=list)


def parse_hypernet_tag(tag: ExtraNetworkTag) -> tuple[str, float]:
    """(name, multiplier) of `<hypernet:NAME[:MULT]>`; raises ValueError naming what is wrong."""
    if not tag.positional or not tag.positional[0]:
        raise ValueError("needs a hypernetwork name")
    if tag.named or len(tag.positional) > 2:
        raise ValueError("takes a name and one multiplier only")
    text = tag.positional[1] if len(tag.positional) > 1 else "1"
    try:
        multiplier = float(text)
    except ValueError:
        raise ValueError(f"multiplier {text!r} is not a number") from None
    if not math.isfinite(multiplier):
        raise ValueError(f"multiplier {text!r} is not a finite number")
    return tag.positional[0], multiplier


def activate_hypernetworks(library: HypernetworkLibrary, tags: list[ExtraNetworkTag], *,
                           widths: AttentionWidths, device: torch.device) -> HypernetworkActivation:
    """Read every hypernetwork the tags name; see the module docstring for what is skipped."""
    result = HypernetworkActivation()
    entries: list[tuple[Hypernetwork, float]] = []
    for tag in tags:
        try:
            name, multiplier = parse_hypernet_tag(tag)
        except ValueError as error:
            result.warnings.append(f"hypernetwork tag <{tag.name}:{':'.join(tag.items)}> "
                                   f"ignored: {error}")
            continue
        entry = library.find(name)
        if entry is None:
            result.warnings.append(f"hypernetwork '{name}' not found in {library.folder}")
            continue
        network = _read(library, entry, device, result.warnings)
        # c + mlp(c) * 0 is c: a zero multiplier is checked like any other, then left out,
        # so that the U-Net runs exactly as without it (the plain attention path).
        if network is not None and _fits(network, entry, widths, result.warnings) and multiplier:
            entries.append((network, multiplier))
    if entries:
        result.transform = HypernetworkStack(entries=tuple(entries))
    return result


def _read(library: HypernetworkLibrary, entry: HypernetworkOnDisk, device: torch.device,
          warnings: list[str]) -> Hypernetwork | None:
    try:
        return library.read(entry, device)
    except Exception as error:  # any damage in a user's file is a warning, never a crash
        warnings.append(f"hypernetwork '{entry.name}' ({entry.path.name}) could not be used "
                        f"and was skipped: {error}")
        return None


def _fits(network: Hypernetwork, entry: HypernetworkOnDisk, widths: AttentionWidths,
          warnings: list[str]) -> bool:
    """False (with a warning) when no MLP matches; a warning when the text context has none."""
    label = f"hypernetwork '{entry.name}' ({entry.path.name})"
    dims = set(network.dims)
    used = sorted(dims & widths.all)
    if not used:
        warnings.append(f"{label}: none of its widths {sorted(dims)} match this model's attention "
                        f"widths {sorted(widths.all)} (made for another base model?); skipped")
        return False
    if widths.context not in dims:
        warnings.append(f"{label} has no MLP for this model's text context width "
                        f"{widths.context} (made for another base model?); applied to "
                        f"self-attention widths {used} only")
    return True
