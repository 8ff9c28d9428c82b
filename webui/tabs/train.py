"""The Train tab: Create embedding, Train embedding (A1111's), and Train LoRA.

Widgets become the params objects of `modules.training.concept_jobs`; the handlers
validate them (errors name the widget), submit the training job to the runtime's queue
(the one generation and the API use), and poll it for the progress bar. Interrupt,
shown only while a training job runs, stops training; what was learned up to then is saved.
Each sub-tab opens with one line saying what it does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import gradio as gr

from modules.pipeline.params import ParamsError
from modules.training.concept_core import CLIP_GRAD_MODES, LATENT_SAMPLING_METHODS
from modules.training.concept_jobs import (
    ConceptDataParams,
    CreateEmbeddingParams,
    TrainEmbeddingParams,
    TrainLoraParams,
    create_embedding_job,
    templates_dirs,
    train_embedding_job,
    train_lora_job,
    validate_embedding_training,
    validate_lora_training,
)
from webui.progress import idle_html, progress_html

POLL_SECONDS = 0.5

# One line per sub-tab, shown at its top: what it makes and from what.
DESCRIPTIONS = {
    "create": "Makes a new, untrained embedding (a word for the prompt) in the embeddings "
              "folder; train it on the next tab.",
    "embedding": "Teaches an existing embedding a concept from a folder of images; the model "
                 "itself stays unchanged.",
    "lora": "Trains a LoRA (a small add-on to the model) from a folder of images; use it in a "
            "prompt as `<lora:name:1>`.",
}

# Widget labels (A1111's where it has the widget), by params field: errors name them.
LABELS = {
    "name": "Name", "init_text": "Initialization text",
    "num_vectors_per_token": "Number of vectors per token",
    "overwrite_old": "Overwrite Old Embedding", "embedding_name": "Embedding",
    "lora_name": "LoRA name", "learn_rate": "Learning rate", "batch_size": "Batch size",
    "gradient_step": "Gradient accumulation steps",
    "data_root": "Dataset directory", "log_directory": "Log directory",
    "template_filename": "Prompt template",
    "training_width": "Width", "training_height": "Height", "steps": "Max steps",
    "create_image_every": "Save an image to log directory every N steps, 0 to disable",
    "save_embedding_every": "Save a copy to log directory every N steps, 0 to disable",
    "shuffle_tags": "Shuffle tags by ',' when creating prompts",
    "tag_drop_out": "Drop out tags when creating prompts",
    "latent_sampling_method": "Choose latent sampling method",
    "clip_grad_mode": "Gradient Clipping",
    "clip_grad_value": "Gradient clipping value", "seed": "Seed", "rank": "Network rank (dim)",
    "alpha": "Network alpha", "text_encoder": "Train the text encoder too",
}


@dataclass
class TrainTab:
    create: dict[str, gr.components.Component]
    embedding: dict[str, gr.components.Component]
    lora: dict[str, gr.components.Component]
    outputs: dict[str, gr.components.Component]


def embedding_names(runtime) -> list[str]:
    folder = runtime.paths.embeddings_dir
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.iterdir() if p.suffix in (".pt", ".safetensors"))


def template_names(runtime) -> list[str]:
    return sorted({p.name for folder in templates_dirs(runtime) if folder.is_dir()
                   for p in folder.glob("*.txt")})


def _widget(name: str, kind, **kwargs):
    return kind(label=LABELS[name], elem_id=f"train_{name}", **kwargs)


def _data_widgets(runtime, defaults: ConceptDataParams,
                  prefix: str) -> dict[str, gr.components.Component]:
    """The dataset / optimisation widgets both trainers share, keyed by params field."""
    w: dict[str, gr.components.Component] = {}

    def labelled(name: str, kind, **kwargs):  # elem_ids unique per sub-tab
        return kind(label=LABELS[name], elem_id=f"{prefix}_{name}", **kwargs)
    with gr.Row():
        w["learn_rate"] = labelled("learn_rate", gr.Textbox, value=defaults.learn_rate)
        w["clip_grad_mode"] = labelled("clip_grad_mode", gr.Dropdown, choices=list(CLIP_GRAD_MODES),
                                      value=defaults.clip_grad_mode)
        w["clip_grad_value"] = labelled("clip_grad_value", gr.Number,
                                        value=defaults.clip_grad_value)
    with gr.Row():
        w["batch_size"] = labelled("batch_size", gr.Number, value=defaults.batch_size, precision=0)
        w["gradient_step"] = labelled("gradient_step", gr.Number, value=defaults.gradient_step,
                                      precision=0)
    w["data_root"] = labelled("data_root", gr.Textbox,
                              placeholder="Path to a directory with input images")
    w["log_directory"] = labelled("log_directory", gr.Textbox, value=defaults.log_directory)
    w["template_filename"] = labelled("template_filename", gr.Dropdown,
                                      choices=template_names(runtime),
                                     value=defaults.template_filename)
    with gr.Row():
        w["training_width"] = labelled("training_width", gr.Number, value=0, precision=0,
                                      info="0: the model's native size")
        w["training_height"] = labelled("training_height", gr.Number, value=0, precision=0)
    w["steps"] = labelled("steps", gr.Number, value=defaults.steps, precision=0)
    with gr.Row():
        w["create_image_every"] = labelled("create_image_every", gr.Number,
                                           value=defaults.create_image_every,
                                          precision=0)
        w["save_embedding_every"] = labelled("save_embedding_every", gr.Number,
                                            value=defaults.save_embedding_every, precision=0)
    with gr.Row():
        w["shuffle_tags"] = labelled("shuffle_tags", gr.Checkbox, value=False)
        w["tag_drop_out"] = labelled("tag_drop_out", gr.Slider, minimum=0, maximum=0.95, step=0.05,
                                     value=0)
    w["latent_sampling_method"] = labelled("latent_sampling_method", gr.Radio, value="once",
                                          choices=list(LATENT_SAMPLING_METHODS))
    w["seed"] = labelled("seed", gr.Number, value=0, precision=0)
    return w


def _description(key: str) -> None:
    gr.Markdown(DESCRIPTIONS[key], elem_id=f"train_{key}_description",
                elem_classes=["train-description"])


def build(runtime) -> TrainTab:
    outputs: dict[str, gr.components.Component] = {}
    with gr.Tabs(elem_id="train_tabs"):
        with gr.Tab("Create embedding", id="train_create_embedding"):
            _description("create")
            create = {"name": _widget("name", gr.Textbox),
                      "init_text": _widget("init_text", gr.Textbox, value="*"),
                      "num_vectors_per_token": _widget("num_vectors_per_token", gr.Slider,
                                                       minimum=1, maximum=75, step=1, value=1),
                      "overwrite_old": _widget("overwrite_old", gr.Checkbox, value=False)}
            create_button = gr.Button("Create embedding", variant="primary",
                                      elem_id="train_create_button")
            outputs["create_info"] = gr.Textbox(label="Output", interactive=False,
                                                elem_id="train_create_info")
        with gr.Tab("Train embedding", id="train_embedding"):
            _description("embedding")
            embedding = {"embedding_name": _widget("embedding_name", gr.Dropdown,
                                                   choices=embedding_names(runtime))}
            refresh = gr.Button("🔄", elem_id="train_refresh_embeddings", size="sm")
            embedding |= _data_widgets(runtime, TrainEmbeddingParams(), "train_embedding")
            embedding_button = gr.Button("Train Embedding", variant="primary",
                                         elem_id="train_embedding_button")
        with gr.Tab("Train LoRA", id="train_lora"):
            _description("lora")
            defaults = TrainLoraParams()
            lora = {"lora_name": _widget("lora_name", gr.Textbox),
                    "rank": _widget("rank", gr.Number, value=defaults.rank, precision=0),
                    "alpha": _widget("alpha", gr.Number, value=defaults.alpha),
                    "text_encoder": _widget("text_encoder", gr.Checkbox, value=False)}
            lora |= _data_widgets(runtime, defaults, "train_lora")
            lora_button = gr.Button("Train LoRA", variant="primary", elem_id="train_lora_button")
    with gr.Row():
        interrupt = gr.Button("Interrupt", elem_id="train_interrupt", visible=False)
    outputs["progress"] = gr.HTML(idle_html(), elem_id="train_progress")
    outputs["info"] = gr.Textbox(label="Training output", interactive=False, elem_id="train_info")
    tab = TrainTab(create=create, embedding=embedding, lora=lora, outputs=outputs)
    _wire(runtime, tab, create_button, refresh, embedding_button, lora_button, interrupt)
    return tab


def _wire(runtime, tab: TrainTab, create_button, refresh, embedding_button, lora_button,
          interrupt) -> None:
    def create(*values):
        return create_embedding_action(runtime, dict(zip(tab.create, values)))

    def train_embedding(*values):
        yield from train_embedding_action(runtime, dict(zip(tab.embedding, values)))

    def train_lora(*values):
        yield from train_lora_action(runtime, dict(zip(tab.lora, values)))

    def stop():
        runtime.jobs.interrupt()

    progress = [tab.outputs["progress"], tab.outputs["info"]]
    create_button.click(create, list(tab.create.values()),
                        [tab.outputs["create_info"], tab.embedding["embedding_name"]])
    refresh.click(lambda: gr.Dropdown(choices=embedding_names(runtime)), None,
                  tab.embedding["embedding_name"], queue=False)
    # Interrupt shows once the inputs passed validation and hides when the job ends (or fails).
    for button, train, inputs in ((embedding_button, train_embedding, tab.embedding),
                                  (lora_button, train_lora, tab.lora)):
        button.click(_with_interrupt(train), list(inputs.values()), [*progress, interrupt]
                     ).then(lambda: gr.update(visible=False), None, interrupt, queue=False)
    interrupt.click(stop, None, None, queue=False)


def _with_interrupt(train):
    """The training generator with the Interrupt button shown beside each update."""
    def run(*values):
        for update in train(*values):
            yield *update, gr.update(visible=True)
    return run


def _params(cls, values: dict[str, Any]):
    """Widget values -> a params object (0 width/height: native; numbers made whole)."""
    names = {f.name for f in fields(cls)}
    kept = {k: v for k, v in values.items() if k in names}
    for key in ("training_width", "training_height"):
        if key in kept and not kept[key]:
            kept[key] = None
    for key in ("batch_size", "gradient_step", "steps", "create_image_every",
                "save_embedding_every", "seed", "rank", "num_vectors_per_token"):
        if isinstance(kept.get(key), float) and kept[key].is_integer():
            kept[key] = int(kept[key])
    return cls(**kept)


def _ui_error(error: ParamsError) -> gr.Error:
    return gr.Error(f"{LABELS.get(error.field, error.field)}: {error.reason}")


def create_embedding_action(runtime, values: dict[str, Any]):
    """Create the embedding; returns (info text, refreshed embedding dropdown)."""
    params = _params(CreateEmbeddingParams, values)
    try:
        path = runtime.jobs.submit(lambda: create_embedding_job(runtime, params)).wait()
    except ParamsError as error:
        raise _ui_error(error) from error
    return f"Created: {path}", gr.Dropdown(choices=embedding_names(runtime), value=path.stem)


def train_embedding_action(runtime, values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    params = _params(TrainEmbeddingParams, values)
    try:
        validate_embedding_training(runtime, params)
    except ParamsError as error:
        raise _ui_error(error) from error
    job = runtime.jobs.submit(lambda: train_embedding_job(runtime, params))
    yield from _poll(runtime, job,
                     lambda r: f"Embedding saved to {', '.join(map(str, r.paths))} "
                               f"at step {r.step}" + (" (interrupted)" if r.interrupted else ""))


def train_lora_action(runtime, values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    params = _params(TrainLoraParams, values)
    try:
        validate_lora_training(runtime, params)
    except ParamsError as error:
        raise _ui_error(error) from error
    job = runtime.jobs.submit(lambda: train_lora_job(runtime, params))
    yield from _poll(runtime, job, lambda r: f"LoRA saved to {r.path} at step {r.step}"
                                             + (" (interrupted)" if r.interrupted else ""))


def _poll(runtime, job, describe) -> Iterator[tuple[str, str]]:
    """Progress bar and loss text while the job runs; the result (or the error) at the end."""
    while not job.done:
        text = job.progress.text if job.progress is not None else ""
        yield progress_html(runtime, job), text
        time.sleep(POLL_SECONDS)
    try:
        result = job.wait()
    except ParamsError as error:
        raise _ui_error(error) from error
    except Exception as error:  # shown to the user; the server keeps serving
        yield idle_html(), f"Training failed: {error}"
        return
    yield idle_html(), describe(result)
