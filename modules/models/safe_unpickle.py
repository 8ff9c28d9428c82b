"""Loading pickled `.ckpt` / `.pt` / `.bin` files with an allow-list, never unrestricted.

A pickle can call any Python function while it loads, so a downloaded `.ckpt` is code.
We read them in two independent layers, and neither ever falls back to plain pickle:

1. Our own scan, which executes nothing: the zip layout is checked (only
   `<dir>/data.pkl`, `<dir>/data/<n>`, `<dir>/version`, ... entries, exactly one
   `data.pkl`), then every global the pickle names is read off its opcodes with
   `pickletools` and compared with `ALLOWED_GLOBALS`. The first other global stops the
   load with `<file>: refusing to unpickle global 'module.name'`. Legacy (non-zip)
   torch files are scanned the same way, pickle by pickle.
2. `torch.load(weights_only=True)`: PyTorch's restricted unpickler, which builds real
   storages from the zip entries (memory-mapped) and refuses unknown globals itself.
   We pass the few extra names real SD checkpoints need through `safe_globals`.

Why torch's unpickler rather than a hand-written `persistent_load`: it is the audited
path (CVE-2025-32434 and CVE-2026-24747 are fixed in the torch we pin) and it already
knows every storage and tensor-rebuild layout torch has written; layer 1 gives us the
clear error and an allow-list that is ours, not torch's default.

Real SD training checkpoints pickle a `pytorch_lightning...ModelCheckpoint` callback.
pytorch_lightning is not installed and must never be imported, so that name resolves
to `LightningCheckpointStub`, an empty class that stores whatever state it is given.
"""

from __future__ import annotations

import io
import os
import pickletools
import re
import zipfile
from typing import Any

import torch

from modules.models.errors import ModelLoadError, UnsafePickleError

LIGHTNING_CHECKPOINT = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"

_TORCH_STORAGES = (
    "Float Half BFloat16 Double Int Long Short Char Byte Bool ComplexFloat ComplexDouble"
).split()

ALLOWED_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "builtins.set",
        "builtins.frozenset",
        "__builtin__.set",
        "_codecs.encode",  # how protocol-2 pickles spell bytes
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
        "torch.Size",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        *(f"torch.{name}Storage" for name in _TORCH_STORAGES),
        *(f"torch.{name}" for name in ("float32", "float16", "bfloat16", "float64", "int64")),
        # numpy scalars in Lightning callback state (e.g. best_model_score)
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.dtype",
        *(f"numpy.dtypes.{name}DType" for name in ("Float64", "Float32", "Int64", "Int32")),
        LIGHTNING_CHECKPOINT,
    }
)

# Entry names torch writes in its zip format; anything else is not a torch checkpoint.
_ZIP_ENTRY = re.compile(
    r"^[^/]+/(data/\d+|version|byteorder|data\.pkl|\.data/serialization_id"
    r"|\.data/version|\.format_version|\.storage_alignment)$"
)
_LEGACY_PICKLES = 5  # magic number, protocol, sys info, the object, storage keys
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
     "BINSTRING", "STRING"}
)
_MEMO_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NO_PUSH_OPS = frozenset({"MEMOIZE", "FRAME", "PROTO"}) | _MEMO_PUT_OPS


class LightningCheckpointStub:
    """Inert stand-in for pytorch_lightning's `ModelCheckpoint` callback object."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


LightningCheckpointStub.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
LightningCheckpointStub.__qualname__ = "ModelCheckpoint"
LightningCheckpointStub.__name__ = "ModelCheckpoint"


def load_pickle_checkpoint(
    path: str | os.PathLike[str], *, mmap: bool = True
) -> Any:
    """Scan, then load `path` with torch's restricted unpickler; raise `ModelLoadError`.

    With `mmap=True` (zip files only) tensors are backed by the file, so reading
    shapes costs no tensor data and the final copy is made by the caller's cast.
    """
    path = os.fspath(path)
    is_zip = check_pickle_file(path)
    try:
        with torch.serialization.safe_globals(_extra_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except Exception as error:  # torch raises several types; all mean "not loadable"
        raise ModelLoadError(path,
                             f"cannot load pickled checkpoint ({_first_line(error)})") from error


def check_pickle_file(path: str) -> bool:
    """Raise unless every global in the file is allowed; return whether it is a zip file."""
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise ModelLoadError(path, f"cannot read file ({error.strerror or error})") from error
    if size == 0:
        raise ModelLoadError(path, "empty file")
    if zipfile.is_zipfile(path):
        _check_zip(path)
        return True
    _check_legacy(path)
    return False


def _check_zip(path: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad = [name for name in names if not _ZIP_ENTRY.match(name)]
            if bad:
                raise ModelLoadError(path, f"unexpected entry {bad[0]!r} in a torch zip file")
            pickles = [name for name in names if name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ModelLoadError(path, f"expected one data.pkl, found {len(pickles)}")
            data = archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ModelLoadError(path, f"corrupt zip file ({error})") from error
    check_pickle_globals(io.BytesIO(data), path=path)


def _check_legacy(path: str) -> None:
    """Legacy torch files are several pickles in a row followed by raw storage bytes."""
    with open(path, "rb", buffering=1 << 16) as stream:
        for index in range(_LEGACY_PICKLES):
            if index > 0 and not stream.peek(1):
                break  # a plain pickle: fully scanned; torch.load will judge the format
            try:
                check_pickle_globals(stream, path=path)
            except UnsafePickleError:
                raise
            except ModelLoadError as error:
                if index == 0:
                    raise ModelLoadError(path,
                                         "not a torch checkpoint (no valid pickle)") from error
                raise


def check_pickle_globals(stream: io.BufferedIOBase, *, path: str) -> list[str]:
    """Read one pickle's opcodes (executing nothing) and refuse any disallowed global."""
    found: list[str] = []
    recent: list[str | None] = []  # values of the latest pushes, for STACK_GLOBAL
    memo: dict[int, str | None] = {}
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                found.append(_allow(str(arg).replace(" ", "."), path))
            elif name == "STACK_GLOBAL":
                found.append(_allow(_stack_global_name(recent, path), path))
            elif name.startswith("EXT"):
                raise UnsafePickleError(path, "refusing pickle extension-registry opcode")
            _track_strings(name, arg, recent, memo)
            if name == "STOP":
                break
    except (ValueError, EOFError, UnicodeDecodeError) as error:
        raise ModelLoadError(path, f"corrupt pickle ({_first_line(error)})") from error
    return found


def _track_strings(name: str, arg: Any, recent: list[str | None],
                   memo: dict[int, str | None]) -> None:
    if name in _MEMO_PUT_OPS:
        memo[arg] = recent[-1] if recent else None
    elif name == "MEMOIZE":
        memo[len(memo)] = recent[-1] if recent else None
    elif name in _MEMO_GET_OPS:
        recent.append(memo.get(arg))
    elif name not in _NO_PUSH_OPS:
        recent.append(arg if name in _STRING_OPS else None)
    del recent[:-2]


def _stack_global_name(recent: list[str | None], path: str) -> str:
    if len(recent) < 2 or recent[-2] is None or recent[-1] is None:
        raise UnsafePickleError(path, "refusing to unpickle a global whose name cannot be read")
    return f"{recent[-2]}.{recent[-1]}"


def _allow(dotted: str, path: str) -> str:
    if dotted not in ALLOWED_GLOBALS:
        raise UnsafePickleError(path, f"refusing to unpickle global '{dotted}'")
    return dotted


def _extra_safe_globals() -> list[Any]:
    """Allowed names that torch's own restricted unpickler does not accept by default."""
    extras: list[Any] = [LightningCheckpointStub]
    try:
        import numpy
        from numpy._core import multiarray
    except ImportError:
        return extras
    extras += [
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        multiarray.scalar,
        numpy.dtype,
        *(getattr(numpy.dtypes, f"{kind}DType")
          for kind in ("Float64", "Float32", "Int64", "Int32")),
    ]
    return extras


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
