"""Creating and writing textual-inversion embeddings in A1111's two formats.

* `.pt` (A1111's own): a torch dict `{"string_to_token": {"*": 265}, "string_to_param":
  {"*": (n, C)}, "name", "step", "sd_checkpoint", "sd_checkpoint_name"}`;
* `.safetensors` (kohya's): one tensor `emb_params` (n, C); the same four fields go in the
  file's text metadata.

Both read back through `modules.networks.embeddings.read_embedding`. The trigger word is
the file stem. Creation follows A1111's "Create embedding": the name keeps only letters,
digits and `._- `; the vectors start as the token embeddings of the initialisation text
(its first n tokens, or its tokens stretched over n vectors when it has fewer; zeros when
it is empty); an existing file is replaced only with `overwrite_old`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.conditioning.tokenizer import ClipTokenizer
from modules.errors import ParamsError
from modules.imaging.filenames import is_reserved_name

MAX_VECTORS = 75  # one prompt chunk
MAX_NAME_BYTES = 200  # a file name holds 255 bytes; room for ".safetensors" and more
STAR_TOKEN = 265  # A1111 writes this placeholder id for "*"
FORMATS = (".pt", ".safetensors")


@dataclass(frozen=True, kw_only=True)
class EmbeddingData:
    """An embedding in memory: its word, its (n, C) vectors, and what it was trained on."""

    name: str
    vectors: torch.Tensor
    step: int = 0
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None


def clean_name(name: str, *, field: str = "name") -> str:
    """A1111's rule for embedding names: letters, digits, '.', '_', '-' and space only.

    A Windows device name (`con`, `NUL`, `com1`) is refused on every OS, not renamed: the
    name is the word prompts use, and its file must open on Windows too.
    """
    cleaned = "".join(c for c in str(name) if c.isalnum() or c in "._- ").strip()
    if not cleaned or cleaned.strip(".") == "":
        raise ParamsError(field, f"{name!r} has no usable characters (letters, digits, '._- ')")
    if is_reserved_name(cleaned):
        raise ParamsError(field, f"{cleaned!r} is a device name on Windows (CON, PRN, AUX, NUL, "
                                 "COM1-9, LPT1-9); choose another name")
    check_name_length(cleaned, field)
    return cleaned


def check_name_length(name: str, field: str) -> None:
    """File systems take 255 bytes per name: the name plus a suffix must fit."""
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ParamsError(field, f"the name is {size} bytes long (UTF-8); the limit is "
                                 f"{MAX_NAME_BYTES}")


def initial_vectors(token_embedding: torch.Tensor, tokenizer: ClipTokenizer, init_text: str,
                    count: int) -> torch.Tensor:
    """(count, C) starting vectors from the initialisation text's token embeddings."""
    if not 1 <= count <= MAX_VECTORS:
        raise ParamsError("num_vectors_per_token", f"must be in 1..{MAX_VECTORS}, got {count}")
    ids = tokenizer.encode(init_text)[:count] if init_text else []
    vectors = torch.zeros((count, token_embedding.shape[1]), dtype=torch.float32)
    if ids:
        rows = token_embedding.detach().float()[torch.tensor(ids)]
        # Fewer tokens than vectors: each token covers a run of vectors, in order.
        for i in range(count):
            vectors[i] = rows[i * len(ids) // count]
    return vectors


def embedding_path(folder: Path, name: str, suffix: str = ".pt") -> Path:
    return folder / f"{clean_name(name)}{suffix}"


def create_embedding(*, folder: Path, name: str, token_embedding: torch.Tensor,
                     tokenizer: ClipTokenizer,
                     num_vectors_per_token: int = 1, overwrite_old: bool = False,
                     init_text: str = "*", sd_checkpoint: str | None = None,
                     sd_checkpoint_name: str | None = None) -> Path:
    """Write a new, untrained embedding as `<folder>/<name>.pt`; returns its path.

    An embedding of that name in any format or subfolder (a trained `.safetensors`) is
    never shadowed by a blank `.pt`: without `overwrite_old` the name is refused; with it,
    the `.pt` is replaced, or when there is none, that file itself (in its format)."""
    path = embedding_path(folder, name)
    existing = path if path.is_file() else existing_embedding(folder, path.stem)
    if existing is not None and not overwrite_old:
        raise ParamsError("name", f"an embedding named {path.stem!r} already exists "
                                  f"({existing.relative_to(folder).as_posix()}); tick "
                                  "\"Overwrite Old Embedding\" (overwrite_old) to replace it")
    if existing is not None:
        if existing.suffix not in FORMATS:
            raise ParamsError("name", f"{existing.name} exists and is not a {FORMATS} file "
                                      "that can be replaced; remove it or pick another name")
        path = existing
    vectors = initial_vectors(token_embedding, tokenizer, init_text, num_vectors_per_token)
    data = EmbeddingData(name=path.stem, vectors=vectors, sd_checkpoint=sd_checkpoint,
                         sd_checkpoint_name=sd_checkpoint_name)
    return save_embedding(data, path)


def existing_embedding(folder: Path, stem: str) -> Path | None:
    """The file the embeddings library would read for the word `stem`, if any."""
    from modules.networks.library import walk_files
    from modules.paths import EMBEDDING_SUFFIXES

    return next((p for p in walk_files(folder, EMBEDDING_SUFFIXES) if p.stem == stem), None)


def save_embedding(data: EmbeddingData, path: Path) -> Path:
    """Write `data` in the format the suffix names (.pt or .safetensors), atomically."""
    if path.suffix not in FORMATS:
        raise ValueError(f"{path}: an embedding is saved as one of {FORMATS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = data.vectors.detach().float().cpu().contiguous()
    partial = path.with_name(path.name + ".partial")
    if path.suffix == ".pt":
        torch.save({"string_to_token": {"*": STAR_TOKEN}, "string_to_param": {"*": vectors},
                    "name": data.name, "step": data.step, "sd_checkpoint": data.sd_checkpoint,
                    "sd_checkpoint_name": data.sd_checkpoint_name}, partial)
    else:
        metadata = {"name": data.name, "step": str(data.step),
                    "sd_checkpoint": data.sd_checkpoint or "",
                    "sd_checkpoint_name": data.sd_checkpoint_name or ""}
        save_file({"emb_params": vectors}, str(partial), metadata=metadata)
    partial.chmod(0o644)  # a shareable model file, whatever the process umask
    os.replace(partial, path)
    return path


def find_embedding_file(folder: Path, name: str, *, field: str = "embedding_name") -> Path:
    """The `.pt` / `.safetensors` file named `name` directly in `folder` (never a path)."""
    if not name or any(sep in name for sep in ("/", "\\")) or name in (".", ".."):
        raise ParamsError(field, f"{name!r} is not an embedding name")
    check_name_length(name, field)
    for suffix in FORMATS:
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise ParamsError(field, f"no embedding {name!r} in the embeddings folder "
                             f"({folder.name}; create it first)")
