"""Embedding and LoRA training as jobs on the runtime's queue (for the API and the Train tab).

A training job serialises with generation (one job at a time), reports each optimiser
step as a `jobs.Progress` event, and stops early, keeping and saving what it learned,
when the queue sends "interrupt". It trains a private float32 CPU copy of the current
checkpoint read from its file, so the model serving generation is never touched.
Afterwards the embedding / LoRA listings are refreshed.

Params objects carry A1111's field names; `validate` checks everything that can be
checked before queueing and raises `ParamsError(field, reason)`.
"""

from __future__ import annotations

import datetime
from collections.abc import Generator
from dataclasses import dataclass, fields
from pathlib import Path

from modules.errors import ParamsError
from modules.jobs import Progress
from modules.paths import ROOT, inside, serves_only_locally
from modules.training.concept_core import TrainingStep
from modules.training.concept_data import folder_items, read_template
from modules.training.embedding_files import clean_name, create_embedding, find_embedding_file
from modules.training.evaluate import load_model
from modules.training.train_embedding import (
    EmbeddingTrainingConfig,
    TrainedEmbedding,
    embedding_training,
)
from modules.training.train_lora import LoraTrainingConfig, TrainedLora, lora_training

TEMPLATES_FOLDER = "textual_inversion_templates"


@dataclass(kw_only=True)
class CreateEmbeddingParams:
    name: str
    num_vectors_per_token: int = 1
    overwrite_old: bool = False
    init_text: str = "*"


@dataclass(kw_only=True)
class ConceptDataParams:
    """Where the images come from and how prompts are made (A1111's names)."""

    data_root: str = ""
    log_directory: str = "textual_inversion"
    template_filename: str = "subject_filewords.txt"
    training_width: int | None = None  # None: the model's native size
    training_height: int | None = None
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"
    learn_rate: str = "0.005"
    batch_size: int = 1
    gradient_step: int = 1
    steps: int = 100000
    clip_grad_mode: str = "disabled"
    clip_grad_value: float = 0.1
    save_embedding_every: int = 500
    create_image_every: int = 500
    seed: int = 0


@dataclass(kw_only=True)
class TrainEmbeddingParams(ConceptDataParams):
    embedding_name: str = ""


@dataclass(kw_only=True)
class TrainLoraParams(ConceptDataParams):
    lora_name: str = ""
    rank: int = 4
    alpha: float = 1.0
    text_encoder: bool = False
    learn_rate: str = "1e-4"
    steps: int = 1000
    template_filename: str = "filewords.txt"
    log_directory: str = "lora_training"  # its own folder, not the embeddings' log


def templates_dirs(runtime) -> list[Path]:
    """The data dir's template folder first, then the one shipped with Easel."""
    return [runtime.paths.data_dir / TEMPLATES_FOLDER, ROOT / TEMPLATES_FOLDER]


def template_lines(runtime, filename: str) -> list[str]:
    """The template's lines from the first folder that has a file of that name (a name,
    never a path: `read_template` looks it up in the folder's listing)."""
    for folder in templates_dirs(runtime):
        if folder.is_dir() and filename in {p.name for p in folder.glob("*.txt")}:
            return read_template(folder, filename)
    return read_template(templates_dirs(runtime)[-1], filename)  # raises, naming the field


def log_folder(runtime, params: ConceptDataParams, name: str) -> Path:
    """`<data dir>/<log_directory>/<date>/<name>`; the log directory must stay inside the data
    dir."""
    base = runtime.paths.data_dir.resolve()
    default = type(params).log_directory  # the trainer's own folder when the box is empty
    folder = (base / (params.log_directory or default)).resolve()
    if not folder.is_relative_to(base):
        raise ParamsError("log_directory",
                          f"{params.log_directory!r} leads outside the data directory")
    return folder / datetime.date.today().isoformat() / name


def dataset_folder(runtime, data_root: str) -> Path:
    """`data_root` as a folder this server may read: inside the data directory, or anywhere
    when only this machine can reach the server (`serves_only_locally`). Missing, not a
    folder and not allowed give one answer, so a client cannot probe which folders exist."""
    text = str(data_root or "").strip()
    folder = Path(text).expanduser()
    allowed = serves_only_locally(runtime.args) or inside(runtime.paths.data_dir, folder)
    if not text or not allowed or not _is_folder(folder):
        where = "" if serves_only_locally(runtime.args) else " inside the data directory"
        raise ParamsError("data_root", f"{text[:200]!r} is not a dataset folder{where}")
    return folder


def _is_folder(path: Path) -> bool:
    """`Path.is_dir`, False also for names the OS refuses (too long, invalid)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def training_size(params: ConceptDataParams, native: int) -> tuple[int, int]:
    sizes = []
    for field_name in ("training_width", "training_height"):
        value = getattr(params, field_name) or native
        if not isinstance(value, int) or not 64 <= value <= 2048 or value % 8:
            raise ParamsError(field_name, f"must be a multiple of 8 in 64..2048, got {value!r}")
        sizes.append(value)
    return sizes[0], sizes[1]


def _common(params: ConceptDataParams) -> dict:
    return dict(learn_rate=params.learn_rate, batch_size=params.batch_size,
                gradient_step=params.gradient_step,
                steps=params.steps, save_every=params.save_embedding_every,
                preview_every=params.create_image_every,
                shuffle_tags=params.shuffle_tags, tag_drop_out=params.tag_drop_out,
                latent_sampling_method=params.latent_sampling_method,
                clip_grad_mode=params.clip_grad_mode,
                clip_grad_value=params.clip_grad_value, seed=params.seed)


def embedding_config(params: TrainEmbeddingParams) -> EmbeddingTrainingConfig:
    config = EmbeddingTrainingConfig(**_common(params))
    config.validate()
    return config


def lora_config(params: TrainLoraParams) -> LoraTrainingConfig:
    config = LoraTrainingConfig(rank=params.rank, alpha=params.alpha,
                                text_encoder=params.text_encoder, **_common(params))
    config.validate()
    return config


def validate_embedding_training(runtime, params: TrainEmbeddingParams) -> Path:
    """Everything checkable before queueing; returns the embedding's file."""
    embedding_config(params)
    template_lines(runtime, params.template_filename)
    log_folder(runtime, params, "check")
    dataset_folder(runtime, params.data_root)
    return find_embedding_file(runtime.paths.embeddings_dir, params.embedding_name)


def validate_lora_training(runtime, params: TrainLoraParams) -> Path:
    lora_config(params)
    template_lines(runtime, params.template_filename)
    log_folder(runtime, params, "check")
    dataset_folder(runtime, params.data_root)
    return runtime.paths.lora_dir / f"{clean_name(params.lora_name, field='lora_name')}.safetensors"


def create_embedding_job(
    runtime, params: CreateEmbeddingParams,
) -> Generator[Progress, str | None, Path]:
    """Write a new embedding for the current model; returns its path."""
    loaded = runtime.models.get()
    spec = loaded.family.text_encoders[0]
    if loaded.family.is_sdxl:
        raise ParamsError("name", "creating SDXL embeddings is not supported")
    path = create_embedding(
        folder=runtime.paths.embeddings_dir, name=params.name,
        tokenizer=loaded.conditioner.tokenizer,
        token_embedding=loaded.model.text_encoders[spec.name].token_embedding.weight,
        num_vectors_per_token=params.num_vectors_per_token, overwrite_old=params.overwrite_old,
        init_text=params.init_text, sd_checkpoint=loaded.shorthash,
        sd_checkpoint_name=loaded.info.name)
    runtime.networks.embeddings.refresh()
    return path
    yield  # a generator with no steps: the job queue drives every job the same way


def train_embedding_job(
    runtime, params: TrainEmbeddingParams,
) -> Generator[Progress, str | None, TrainedEmbedding]:
    embedding_file = validate_embedding_training(runtime, params)
    loaded, model = _private_model(runtime)
    width, height = training_size(params, loaded.family.native_resolution)
    items = folder_items(params.data_root, width=width, height=height)
    training = embedding_training(
        model, embedding_file=embedding_file, items=items, config=embedding_config(params),
        template=template_lines(runtime, params.template_filename),
        tokenizer=loaded.conditioner.tokenizer,
        log_dir=log_folder(runtime, params, embedding_file.stem), checkpoint_hash=loaded.shorthash,
        checkpoint_name=loaded.info.name)
    result = yield from as_progress(training, "embedding")
    runtime.networks.embeddings.refresh()
    return result


def train_lora_job(
    runtime, params: TrainLoraParams,
) -> Generator[Progress, str | None, TrainedLora]:
    out = validate_lora_training(runtime, params)
    loaded, model = _private_model(runtime)
    width, height = training_size(params, loaded.family.native_resolution)
    items = folder_items(params.data_root, width=width, height=height)
    training = lora_training(model, out=out, items=items, config=lora_config(params),
                             tokenizer=loaded.conditioner.tokenizer,
                             template=template_lines(runtime, params.template_filename),
                             log_dir=log_folder(runtime, params, out.stem),
                             checkpoint_name=loaded.info.name)
    result = yield from as_progress(training, "LoRA")
    runtime.networks.loras.refresh()
    return result


def _private_model(runtime):
    loaded = runtime.models.get()
    return loaded, load_model(loaded.info.path)


def as_progress(training: Generator[TrainingStep, str | None, object], what: str):
    """Relay training steps as queue `Progress` events; "interrupt" stops training (and saves)."""
    command = None
    try:
        while True:
            event = training.send(command)
            answer = yield Progress(step=event.step, total_steps=event.total,
                                    text=f"Training {what}: step {event.step}/{event.total}, "
                                         f"loss {event.loss:.4f}, rate {event.learn_rate:g}")
            command = "interrupt" if answer == "interrupt" else None
    except StopIteration as stop:
        return stop.value


def params_from(cls, values: dict):
    """A params dataclass from a dict, keeping only its own fields (API extras are ignored)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})
