"""Textual inversion (Gal et al., 2022, https://arxiv.org/abs/2208.01618) on a frozen model.

An embedding's vectors stand in for its word in a prompt; training moves only them, so
that the frozen U-Net, conditioned on prompts containing the word, predicts the noise
of the training images well. The options are A1111's "Train embedding" ones: learn rate
(with its schedule syntax), batch size, gradient accumulation, a dataset directory
with `[filewords]` captions and a template file, steps, save / preview every N steps,
tag shuffling and dropout, latent sampling method and gradient clipping. Training
continues from the step stored in the file.

The held-out bar of Easel's demo set is one command:

    python -m modules.training.train_embedding --bar

which writes `models/embeddings/easel-bar.safetensors` (and its `.pt` twin under
`textual_inversion/easel-bar/`). `--data-root DIR` trains on your own images instead.
`train_bar_embedding(model_path, config=..., out=...)` is the same as a function.
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from modules.conditioning.embeddings import EmbeddingTable, TextualInversion
from modules.conditioning.tokenizer import ClipTokenizer
from modules.errors import ParamsError
from modules.models.sd_model import StableDiffusionModel
from modules.networks.embeddings import SINGLE, read_embedding
from modules.paths import ROOT
from modules.training.concept_core import (
    Batches,
    ConceptTrainingOptions,
    LatentCache,
    StepLoop,
    TrainingStep,
    concept_parser,
    drive,
    encode_prompts,
    noise_prediction_loss,
    optimise,
    training_alphas,
    with_checkpoints,
)
from modules.training.concept_data import (
    DEFAULT_MODEL,
    ConceptItem,
    PromptOptions,
    bar_items,
    folder_items,
    make_prompt,
    read_template,
)
from modules.training.concept_preview import preview_image, save_preview
from modules.training.embedding_files import EmbeddingData, create_embedding, save_embedding
from modules.training.evaluate import load_model

BAR_WORD = "easel-bar"
DEFAULT_OUT = Path("models/embeddings") / f"{BAR_WORD}.safetensors"


@dataclass(frozen=True, kw_only=True)
class EmbeddingTrainingConfig(ConceptTrainingOptions):
    """A1111's train-embedding options and defaults."""

    learn_rate: str = "0.005"
    steps: int = 100000
    save_every: int = 500
    preview_every: int = 500


# The bar recipe: about 5 minutes on one free core of the build machine.
BAR_EMBEDDING_CONFIG = EmbeddingTrainingConfig(
    learn_rate="0.01:200, 0.005", batch_size=16, steps=400, save_every=0, preview_every=0,
    latent_sampling_method="random", min_snr_gamma=5.0, clip_grad_mode="norm", clip_grad_value=1.0)
BAR_VECTORS = 4
BAR_IMAGES = 400


@dataclass
class TrainedEmbedding:
    """What a run produced: the files written, the last step, the losses, whether it was cut
    short."""

    paths: list[Path]
    step: int
    losses: list[float] = field(default_factory=list)
    interrupted: bool = False


def embedding_training(model: StableDiffusionModel, *, embedding_file: Path,
                       items: Sequence[ConceptItem],
                       config: EmbeddingTrainingConfig, template: Sequence[str] = ("[filewords]",),
                       tokenizer: ClipTokenizer, outputs: Sequence[Path] = (),
                       log_dir: Path | None = None,
                       checkpoint_hash: str | None = None, checkpoint_name: str | None = None,
                       ) -> Generator[TrainingStep, str | None, TrainedEmbedding]:
    """Train the embedding in `embedding_file` (a generator: one event per step).

    Writes the result back to `embedding_file` and to every path in `outputs` (format by
    suffix); with `log_dir`, intermediate files and previews go to its `embeddings/` and
    `images/` folders.
    """
    schedule = config.validate()
    model.requires_grad_(False)  # only the embedding's vectors learn
    loaded = read_embedding(embedding_file)
    name = embedding_file.stem
    spec = model.family.text_encoders[0]
    vectors = _trainable_vectors(loaded.vectors, spec.config.hidden_size)
    start, total = loaded.step or 0, schedule.total_steps(config.steps)
    _check_usable(name, start, total, template, items)
    table = EmbeddingTable([TextualInversion(name, tuple(tokenizer.encode(name)),
                                             {spec.name: vectors})])
    generator = torch.Generator().manual_seed(config.seed)
    cache = LatentCache(model, items, method=config.latent_sampling_method, generator=generator)
    batches = Batches(len(items), batch_size=config.batch_size, seed=config.seed)
    options = PromptOptions(name=name, template=tuple(template), shuffle_tags=config.shuffle_tags,
                            tag_drop_out=config.tag_drop_out)
    rng, alphas = random.Random(config.seed), training_alphas(model)

    def micro_loss() -> torch.Tensor:
        rows = batches.next()
        prompts = [make_prompt(items[row].filewords, options, rng) for row in rows]
        context = encode_prompts(model, tokenizer, prompts, embeddings=table)
        return noise_prediction_loss(model.unet, cache.latents(rows, generator), context,
                                     alphas_cumprod=alphas, generator=generator,
                                     min_snr_gamma=config.min_snr_gamma)

    def snapshot(step: int) -> EmbeddingData:
        return EmbeddingData(name=name, vectors=vectors.detach().clone(), step=step,
                             sd_checkpoint=checkpoint_hash, sd_checkpoint_name=checkpoint_name)

    loop = StepLoop(schedule=schedule, total_steps=total, gradient_step=config.gradient_step,
                    clip_grad_mode=config.clip_grad_mode, clip_grad_value=config.clip_grad_value)
    result = TrainedEmbedding(paths=[], step=start)
    preview_prompt = make_prompt(items[0].filewords, replace(options, tag_drop_out=0.0),
                                 random.Random(0))

    def save(step: int) -> None:
        save_embedding(snapshot(step), log_dir / "embeddings" / f"{name}-{step}.pt")

    def preview(step: int) -> None:
        image = preview_image(model, tokenizer, preview_prompt, seed=config.seed, embeddings=table)
        save_preview(image, log_dir / "images", name, step)

    logging = log_dir is not None
    result.step = yield from with_checkpoints(
        optimise([vectors], loop, micro_loss, start_step=start), losses=result.losses,
        save_every=config.save_every, save=save if logging else None,
        preview_every=config.preview_every, preview=preview if logging else None)
    result.interrupted = result.step < total
    final = snapshot(result.step)
    result.paths = [save_embedding(final, path)
                    for path in dict.fromkeys([embedding_file, *outputs])]
    return result


def _check_usable(name: str, start: int, total: int, template: Sequence[str],
                  items: Sequence[ConceptItem]) -> None:
    """A run that would do nothing is an error that says why."""
    if start >= total:
        raise ParamsError("steps",
                          f"{name} is already trained for {start} steps (asked for {total})")
    if (not any("[name]" in line for line in template)
            and not any(name in item.filewords for item in items)):
        raise ParamsError("template_filename",
                          f"no template line has [name] and no caption names {name!r}, "
                          "so the embedding would never be used")


def _trainable_vectors(vectors: dict[str, torch.Tensor], width: int) -> torch.nn.Parameter:
    if SINGLE not in vectors:
        raise ParamsError("embedding_name",
                          "an SDXL embedding (clip_l + clip_g) cannot be trained here")
    rows = vectors[SINGLE]
    if rows.shape[-1] != width:
        raise ParamsError("embedding_name",
                          f"vector width {rows.shape[-1]} does not fit this model "
                          f"(its text encoder is {width} wide)")
    return torch.nn.Parameter(rows.detach().float().clone())


def train_new_embedding(model_path: Path, *, config: EmbeddingTrainingConfig, out: Path,
                        data_root: Path | None = None, template: Sequence[str] = ("[filewords]",),
                        vectors: int = BAR_VECTORS, init_text: str = "shape",
                        images: int = BAR_IMAGES,
                        log_dir: Path | None = None, progress: bool = True) -> TrainedEmbedding:
    """Create an embedding named `out.stem` and train it on `data_root`'s images (A1111's
    dataset folder) or, without one, on `images` pictures of the held-out bar.

    Writes `out` and a twin in the other format (`.pt` / `.safetensors`) in `log_dir`
    (default `textual_inversion/<word>`), so the embeddings folder never holds two files
    of one name (the trigger word is the file stem).
    """
    word = out.stem
    model = load_model(model_path)
    tokenizer = ClipTokenizer()
    log_dir = log_dir or Path("textual_inversion") / word
    encoder = model.text_encoders[model.family.text_encoders[0].name]
    seed_file = create_embedding(folder=log_dir, name=word, tokenizer=tokenizer, overwrite_old=True,
                                 token_embedding=encoder.token_embedding.weight,
                                 num_vectors_per_token=vectors,
                                 init_text=init_text, sd_checkpoint_name=model_path.stem)
    size = model.family.native_resolution
    items = (folder_items(data_root, width=size, height=size) if data_root is not None
             else bar_items(word, count=images, seed=config.seed + 100, resolution=size))
    # The log folder's .pt is trained in place; `out` (and a .safetensors twin when `out`
    # is a .pt itself) get the result too.
    outputs = [out] + ([seed_file.with_suffix(".safetensors")] if out.suffix == ".pt" else [])
    training = embedding_training(model, embedding_file=seed_file, items=items, config=config,
                                  template=template, tokenizer=tokenizer, outputs=outputs,
                                  log_dir=log_dir,
                                  checkpoint_name=model_path.stem)
    return drive(training, progress=progress, desc="embedding")


def train_bar_embedding(model_path: Path = DEFAULT_MODEL, *,
                        config: EmbeddingTrainingConfig = BAR_EMBEDDING_CONFIG,
                        out: Path = DEFAULT_OUT, **options) -> TrainedEmbedding:
    """The held-out bar of the demo set (the demo recipe's extra stage)."""
    return train_new_embedding(model_path, config=config, out=out, **options)


def main(argv: Sequence[str] | None = None) -> None:
    parser = concept_parser("Train a textual-inversion embedding on a frozen model.",
                            defaults=BAR_EMBEDDING_CONFIG, out=DEFAULT_OUT,
                            out_help="embedding file to write (.safetensors or .pt); "
                                     "its stem is the word")
    parser.add_argument("--init-text", default="shape", help="initialisation text of the vectors")
    parser.add_argument("--log-dir", type=Path,
                        help="where the twin file goes (default textual_inversion/<word>)")
    parser.add_argument("--vectors", type=int, default=BAR_VECTORS, help="vectors per token")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = replace(BAR_EMBEDDING_CONFIG, steps=args.steps, learn_rate=args.learn_rate,
                     batch_size=args.batch_size, seed=args.seed)
    if args.template:
        template = read_template(args.template.parent, args.template.name)
    else:  # the bar's captions name the word; a folder's need a template with [name]
        template = read_template(ROOT / "textual_inversion_templates", "subject_filewords.txt") \
            if args.data_root else ("[filewords]",)
    began = time.perf_counter()
    try:
        result = train_new_embedding(args.model, config=config, out=args.out,
                                     data_root=args.data_root,
                                     template=template, vectors=args.vectors,
                                     init_text=args.init_text, log_dir=args.log_dir)
    except ParamsError as error:
        parser.error(str(error))
    print(f"wrote {', '.join(map(str, result.paths))} after {result.step} steps "
          f"in {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
