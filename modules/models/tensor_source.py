"""A checkpoint opened for reading tensor by tensor, whatever its container.

The merger needs the names, shapes and dtypes of every input before it reads any data
(to check that the models fit and to write the output header first), and then one
tensor of each input at a time. This wraps the three containers the loader knows:

- `.safetensors`: the header is read alone; tensors are read one at a time on demand.
- pickled `.ckpt` / `.pt`: allow-listed loading (`safe_unpickle`) with the storages
  memory-mapped from the zip file, so a tensor's pages are read when it is used.
- diffusers folders: converted to LDM names by the loader, which reads them whole.

Names are the loader's normalised LDM names (old SD1 CLIP keys gain `text_model.`), so
two files that spell the same weight differently still line up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from modules.models.errors import ModelLoadError
from modules.models.loader import ldm_names, load_state_dict
from modules.models.safe_unpickle import load_pickle_checkpoint
from modules.models.safetensors_io import (
    DTYPE_NAMES,
    TensorInfo,
    iter_safetensors,
    read_safetensors_header,
)
from modules.models.single_file import file_format, unwrap_checkpoint


@dataclass
class TensorSource:
    """One input checkpoint: header (LDM names) up front, tensors on demand."""

    path: str
    format: str  # "safetensors", "pickle" or "diffusers"
    tensors: dict[str, TensorInfo]
    metadata: dict[str, object]
    _file_names: dict[str, str] = field(default_factory=dict, repr=False)
    _loaded: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @staticmethod
    def open(path: str | os.PathLike[str]) -> "TensorSource":
        path = os.fspath(path)
        if os.path.isdir(path):
            loaded = load_state_dict(path)
            return TensorSource(path=path, format="diffusers", metadata={}, _loaded=loaded,
                                tensors={k: TensorInfo.of(v) for k, v in loaded.items()})
        if file_format(path) == "safetensors":
            header = read_safetensors_header(path)
            names = ldm_names(header.tensors)
            return TensorSource(path=path, format="safetensors", metadata=dict(header.metadata),
                                tensors={new: header.tensors[old] for new, old in names.items()},
                                _file_names=names)
        tensors, metadata = unwrap_checkpoint(load_pickle_checkpoint(path), path)
        names = ldm_names(tensors)
        loaded = {new: tensors[old] for new, old in names.items()}
        return TensorSource(path=path, format="pickle", metadata=metadata, _loaded=loaded,
                            tensors={k: _describe(v, k, path) for k, v in loaded.items()})

    def read(self, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield `(name, tensor)` for `keys`, in that order, one tensor alive at a time."""
        keys = list(keys)
        if self._loaded is not None:
            for key in keys:
                yield key, self._loaded[key]
            return
        file_keys = [self._file_names[key] for key in keys]
        for key, (_, tensor) in zip(keys, iter_safetensors(self.path, keys=file_keys)):
            yield key, tensor


def _describe(tensor: torch.Tensor, name: str, path: str) -> TensorInfo:
    if tensor.dtype not in DTYPE_NAMES:
        raise ModelLoadError(path, f"tensor {name!r} has unsupported dtype {tensor.dtype}")
    return TensorInfo.of(tensor)
