"""Walking a model folder: one rule for symbolic links in every kind of model folder.

Checkpoints, VAEs, LoRAs, embeddings, hypernetworks, ControlNets and upscalers are all
found by walking their folder with the same rule:

* links are followed, to files and to folders, wherever they point (A1111 does; people
  link a folder on another drive). Only whoever runs the server can place a link in a
  model folder; clients only ever pick names from the listing, never paths;
* each real folder is walked once, so a link loop or a second link to the same folder
  neither hangs the listing nor lists files twice;
* a link whose target is missing (dangling) is left out, as are hidden folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def walk_folders(root: str | os.PathLike[str]) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` following links, each real folder once, hidden folders and dangling links
    skipped; the caller may prune `subdirs` in place as with `os.walk`."""
    seen: set[str] = set()
    for directory, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a link loop, or a second link to a folder already walked
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files = sorted(f for f in files if os.path.isfile(os.path.join(directory, f)))
        yield directory, subdirs, files


def walk_files(folder: Path, suffixes: tuple[str, ...], *,
               skip_folders: tuple[str, ...] = ()) -> list[Path]:
    """Files under `folder` whose names end in `suffixes` (case-blind), by the module's
    rule, sorted by their path inside `folder` (case-blind); `skip_folders`: names of
    folders not to enter."""
    if not folder.is_dir():
        return []
    found = []
    for directory, subdirs, files in walk_folders(folder):
        subdirs[:] = [d for d in subdirs if d not in skip_folders]
        found += [Path(directory) / f for f in files if f.lower().endswith(suffixes)]
    return sorted(found, key=lambda p: str(p.relative_to(folder)).lower())
