"""The interrogators' model files: found in A1111's folders, loaded offline, read safely.

- BLIP (the caption): a transformers folder of `BlipForConditionalGeneration`
  (`config.json` with `model_type: "blip"`, `model.safetensors` or `pytorch_model.bin`, and
  its tokenizer files) in `models/BLIP/` or a sub-folder of it.
- CLIP (the ranking): a transformers folder of `CLIPModel` (`model_type: "clip"`) in
  `models/clip/` (or `models/CLIP/`, A1111's spelling in its folder table), or a
  sub-folder. Without tokenizer files in the folder, the CLIP vocabulary Easel ships
  (`modules/assets/clip_tokenizer/`) is used: every CLIP model shares it.
- DeepBooru: `model-resnet_custom_v3.pt` in `models/torch_deepdanbooru/` (A1111's file:
  a pickled state dict of `n_Conv_*` tensors plus the tag list under `tags`), read by the
  allow-list unpickler; `.safetensors` files of the same keys are accepted too, with the
  tags in a `tags.txt` beside them.

Nothing here downloads: transformers is called with `local_files_only=True` on a local
folder, and `.bin` weights go through `safe_unpickle` rather than transformers' loader.
A missing model raises `InterrogatorMissing` (the folder and the file expected); a file
that cannot be used raises `ModelLoadError` (the file and the reason).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.models.errors import ModelLoadError
from modules.models.safe_unpickle import load_pickle_checkpoint
from modules.models.safetensors_io import load_safetensors
from modules.nn.deepbooru import IMAGE_SIZE, DeepDanbooruNet, dimensions_of

log = logging.getLogger(__name__)

BLIP_FOLDERS = ("BLIP",)
CLIP_FOLDERS = ("clip", "CLIP")
DEEPBOORU_FOLDERS = ("torch_deepdanbooru", "deepbooru")
DEEPBOORU_FILE = "model-resnet_custom_v3.pt"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
CLIP_VOCAB = Path(__file__).resolve().parents[1] / "assets" / "clip_tokenizer"
CONTEXT_LENGTH = 77  # CLIP's text positions
DEEPBOORU_SIZE = IMAGE_SIZE  # the tagger's square input side


class InterrogatorMissing(LookupError):
    """An interrogator whose model is not installed; the message names folder and file."""


@dataclass
class TransformersModel:
    """A loaded transformers model with its tokenizer and image preprocessing numbers."""

    model: Any
    tokenizer: Any
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: bool  # CLIP: shortest side to size then centre crop; BLIP: squash to size
    folder: Path


def shown(path: Path, models_dir: Path) -> str:
    """`models/BLIP` for a folder under the models folder, else the folder's name, so a
    message names the place the user knows without exposing the server's layout."""
    try:
        return f"models/{path.relative_to(models_dir).as_posix()}"
    except ValueError:
        return path.name


def find_transformers_folder(models_dir: Path, names: tuple[str, ...], model_type: str,
                             example: str) -> Path:
    """The first folder (the named folder itself, then its sub-folders by name) whose
    `config.json` says `model_type`; `InterrogatorMissing` names what to put where."""
    for name in names:
        base = models_dir / name
        candidates = [base] + (sorted(p for p in base.iterdir() if p.is_dir())
                               if base.is_dir() else [])
        for folder in candidates:
            if _config_type(folder / "config.json") == model_type:
                return folder
    raise InterrogatorMissing(
        f"no {model_type.upper()} model found: put a transformers folder ({example}: "
        f"config.json and model.safetensors) in {shown(models_dir / names[0], models_dir)}/ "
        f"(for example {shown(models_dir / names[0], models_dir)}/<name>/config.json)")


def _config_type(path: Path) -> str | None:
    """`model_type` of a config.json; a damaged one is an error naming the file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise ModelLoadError(path, f"not a readable config.json ({error})") from error


def load_transformers(cls, folder: Path):
    """`cls` from a local folder: safetensors through transformers (offline), a `.bin`
    through our allow-list unpickler; every weight must be in the file."""
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(folder, f"no weights: expected one of {', '.join(WEIGHT_FILES)}")
    try:
        if (folder / "pytorch_model.bin").is_file() and not (
                folder / "model.safetensors").is_file():
            config = cls.config_class.from_pretrained(folder, local_files_only=True)
            model = cls(config)
            state = load_pickle_checkpoint(folder / "pytorch_model.bin", mmap=False)
            missing, _ = model.load_state_dict(state, strict=False)
            missing = _untied(model, state, missing)
        else:
            model, info = cls.from_pretrained(folder, local_files_only=True,
                                              use_safetensors=True, output_loading_info=True)
            missing = info.get("missing_keys", [])
    except ModelLoadError:
        raise
    except Exception as error:  # transformers / safetensors raise many types: all "unusable"
        raise ModelLoadError(folder, f"cannot load the model ({_first_line(error)})") from error
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing:
        raise ModelLoadError(folder, f"weights missing from the file: {', '.join(missing[:3])}"
                                     + (" ..." if len(missing) > 3 else ""))
    return model.eval()


def _untied(model, state: dict, missing: list[str]) -> list[str]:
    """`missing` less the weights tied to loaded ones (BLIP's decoder shares the word
    embeddings; a file need not store them twice)."""
    model.tie_weights()
    named = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(named[key]) for key in state if key in named}
    return [key for key in missing if id(named.get(key)) not in loaded]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _preprocessing(folder: Path, default_size: int, crop: bool) -> dict[str, Any]:
    """Size, mean and std from the folder's `preprocessor_config.json` where present
    (transformers' image processor numbers), else CLIP's and the vision config's size."""
    numbers = {"size": (default_size, default_size), "mean": (0.48145466, 0.4578275, 0.40821073),
               "std": (0.26862954, 0.26130258, 0.27577711)}
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return numbers
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(path, f"not a readable preprocessor config ({error})") from error
    size = config.get("crop_size" if crop else "size") or config.get("size")
    if isinstance(size, dict):
        side = size.get("shortest_edge")
        size = (side, side) if side else (size.get("height"), size.get("width"))
    elif isinstance(size, int):
        size = (size, size)
    if size and all(isinstance(v, int) and 0 < v <= 1024 for v in size):
        numbers["size"] = tuple(size)
    for key, name in (("mean", "image_mean"), ("std", "image_std")):
        if isinstance(config.get(name), list) and len(config[name]) == 3:
            numbers[key] = tuple(float(v) for v in config[name])
    return numbers


def load_blip(models_dir: Path, device: torch.device) -> TransformersModel:
    """The caption model: `BlipForConditionalGeneration` and its (BERT) tokenizer."""
    from transformers import AutoTokenizer, BlipForConditionalGeneration

    folder = find_transformers_folder(models_dir, BLIP_FOLDERS, "blip",
                                      "Salesforce/blip-image-captioning-base or -large")
    model = load_transformers(BlipForConditionalGeneration, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:
        raise ModelLoadError(folder, "no usable tokenizer files (vocab.txt or tokenizer.json) "
                                     f"({_first_line(error)})") from error
    numbers = _preprocessing(folder, model.config.vision_config.image_size, crop=False)
    return TransformersModel(model.to(device), tokenizer, numbers["size"], numbers["mean"],
                             numbers["std"], crop=False, folder=folder)


def load_clip(models_dir: Path, device: torch.device) -> TransformersModel:
    """The ranking model: `CLIPModel`, with the folder's tokenizer or the shipped one."""
    from transformers import CLIPModel

    folder = find_transformers_folder(models_dir, CLIP_FOLDERS, "clip",
                                      "openai/clip-vit-large-patch14")
    model = load_transformers(CLIPModel, folder)
    numbers = _preprocessing(folder, model.config.vision_config.image_size, crop=True)
    return TransformersModel(model.to(device), clip_tokenizer(folder), numbers["size"],
                             numbers["mean"], numbers["std"], crop=True, folder=folder)


def clip_tokenizer(folder: Path):
    """The folder's CLIP tokenizer where it has one, else one over Easel's vocabulary."""
    from transformers import AutoTokenizer, CLIPTokenizer

    if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as error:
            raise ModelLoadError(folder, f"unusable tokenizer files ({_first_line(error)})"
                                 ) from error
    vocab = json.loads((CLIP_VOCAB / "vocab.json").read_text(encoding="utf-8"))
    lines = (CLIP_VOCAB / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CONTEXT_LENGTH)


def find_deepbooru(models_dir: Path) -> Path:
    """`model-resnet_custom_v3.pt` (or a `.safetensors` of that name) in A1111's folders."""
    for name in DEEPBOORU_FOLDERS:
        for suffix in (".pt", ".safetensors"):
            path = (models_dir / name / DEEPBOORU_FILE).with_suffix(suffix)
            if path.is_file():
                return path
    folder = shown(models_dir / DEEPBOORU_FOLDERS[0], models_dir)
    raise InterrogatorMissing(f"no DeepBooru model found: put {DEEPBOORU_FILE} in {folder}/")


def load_deepbooru(models_dir: Path, device: torch.device) -> tuple[DeepDanbooruNet, list[str]]:
    """The tagger network (widths read from the file) and its tag names, in output order."""
    path = find_deepbooru(models_dir)
    if path.suffix == ".pt":
        state = load_pickle_checkpoint(path, mmap=False)
    else:
        state = dict(load_safetensors(path))
    if not isinstance(state, dict):
        raise ModelLoadError(path, "not a state dict")
    tags = _tags_of(path, state.pop("tags", None))
    try:
        base, count = dimensions_of(state)
        network = DeepDanbooruNet(base, count)
        network.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, AttributeError, IndexError) as error:
        raise ModelLoadError(path, "not a DeepDanbooru resnet_custom_v3 state dict "
                                   f"({_first_line(error)})") from error
    if len(tags) != count:
        raise ModelLoadError(path, f"{len(tags)} tags for {count} outputs")
    return network.eval().to(device), tags


def _tags_of(path: Path, stored: Any) -> list[str]:
    """The file's tag list, or `tags.txt` beside a safetensors file (one tag a line)."""
    if stored is None and (path.parent / "tags.txt").is_file():
        stored = (path.parent / "tags.txt").read_text(encoding="utf-8").splitlines()
    if not isinstance(stored, (list, tuple)) or not all(isinstance(t, str) for t in stored):
        raise ModelLoadError(path, "no tag list (the state dict's `tags` entry)")
    return list(stored)
