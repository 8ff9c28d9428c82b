"""Pictures made on a replica are saved by the ingress, once, under its `outputs/` tree.

A replica's Runtime saves through a `RecordingSaver` (`Runtime.saver`): it keeps the picture
and `save_image`'s arguments, with the folder relative to the replica's data folder, and
answers a provisional path. The ingress `replay`s the records with the real
`save_image` under its own data folder and puts the real paths in the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.imaging.save import save_image

PENDING = "pending-save-"


@dataclass(frozen=True)
class SaveRecord:
    image: Any  # a PIL image
    folder: str  # relative to the data folder, or absolute when a setting made it so
    options: dict  # save_image's keyword arguments
    provisional: str  # the path the replica's job was told


class RecordingSaver:
    """Records the saves of the replica's running job (one job at a time per replica)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._records: list[SaveRecord] = []

    def __call__(self, image, directory, **options) -> Path:
        folder = Path(directory).resolve()
        if folder.is_relative_to(self.data_dir):
            folder = folder.relative_to(self.data_dir)
        provisional = Path(directory) / f"{PENDING}{len(self._records)}"
        self._records.append(SaveRecord(image=image, folder=str(folder), options=dict(options),
                                        provisional=str(provisional)))
        return provisional

    def take(self) -> list[SaveRecord]:
        records, self._records = self._records, []
        return records


def replay(runtime, records: list[SaveRecord]) -> dict[str, str]:
    """Write `records` under the ingress's data folder; provisional path -> real path."""
    return {record.provisional: str(save_image(record.image, runtime.paths.output_dir(
        record.folder), **record.options)) for record in records}


def with_real_paths(result, paths: dict[str, str]):
    """`result` with its provisional saved paths replaced by the written ones."""
    result.saved_paths[:] = [paths.get(path, path) for path in result.saved_paths]
    if "grid_path" in result.extra:  # a batch's grid (modules/pipeline/output.py)
        result.extra["grid_path"] = paths.get(result.extra["grid_path"],
                                              result.extra["grid_path"])
    return result
