"""LoRA training on a frozen model, saved as a kohya `.safetensors` that `<lora:name:1>` loads.

The network (`lora_network.LoraNetwork`) covers the U-Net's transformer blocks and,
with `text_encoder`, the text encoder's attention and MLP; only its factors learn, by
Stable Diffusion's eps-prediction loss on the training images (`concept_core`). The
data and step options are those of embedding training (learn-rate schedule, batch size,
gradient accumulation, dataset directory with `[filewords]`, template, save / preview
every N steps, tag shuffling and dropout, latent sampling method, clipping).

The held-out bar of Easel's demo set is one command:

    python -m modules.training.train_lora --bar

which writes `models/Lora/easel-bar.safetensors`, meant to make "bar" in a prompt of
the shapes family draw a bar under `<lora:easel-bar:1>`; `--data-root DIR` trains on
your own images instead. `train_bar_lora(model_path, config=..., out=...)` is the same
as a function.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from modules.conditioning.tokenizer import ClipTokenizer
from modules.errors import ParamsError
from modules.models.families import Family
from modules.models.sd_model import StableDiffusionModel
from modules.training.checkpoint import save_model_file
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
from modules.training.evaluate import load_model
from modules.training.lora_network import LoraNetwork
from modules.training.lr_schedule import LearnRateSchedule

BAR_NAME = "easel-bar"
DEFAULT_OUT = Path("models/Lora") / f"{BAR_NAME}.safetensors"


@dataclass(frozen=True, kw_only=True)
class LoraTrainingConfig(ConceptTrainingOptions):
    """The network's size and the optimisation options (A1111 / kohya names)."""

    rank: int = 4  # ss_network_dim
    alpha: float = 1.0  # ss_network_alpha
    text_encoder: bool = False  # also train the text encoder's attention and MLP
    learn_rate: str = "1e-4"

    def validate(self) -> LearnRateSchedule:
        schedule = super().validate()
        if not isinstance(self.rank, int) or not 1 <= self.rank <= 1024:
            raise ParamsError("rank", f"must be a whole number in 1..1024, got {self.rank!r}")
        if not 0 < self.alpha <= 4 * self.rank:
            raise ParamsError("alpha", f"must be in (0, {4 * self.rank}], got {self.alpha}")
        return schedule


# The bar recipe: about 5 minutes on one free core of the build machine.
BAR_LORA_CONFIG = LoraTrainingConfig(
    rank=8, alpha=8.0, learn_rate="1e-3", batch_size=16, steps=400, latent_sampling_method="random",
    min_snr_gamma=5.0, clip_grad_mode="norm", clip_grad_value=1.0)
BAR_IMAGES = 400


@dataclass
class TrainedLora:
    path: Path
    step: int
    losses: list[float] = field(default_factory=list)
    interrupted: bool = False


def base_model_version(family: Family) -> str:
    """kohya's `ss_base_model_version` for a family."""
    if family.is_sdxl:
        return "sdxl_base_v1-0"
    if family.text_encoders[0].name == "clip_h":
        return "sd_v2_v" if family.prediction == "v" else "sd_v2"
    return "sd_v1"


def kohya_metadata(*, name: str, family: Family, config: LoraTrainingConfig, checkpoint_name: str,
                   started: float, steps: int, items: Sequence[ConceptItem]) -> dict[str, str]:
    """The `ss_*` (and `modelspec.*`) keys kohya's trainer writes, as strings."""
    version = base_model_version(family)
    size = family.native_resolution
    words: dict[str, int] = {}
    for item in items:
        words[item.filewords] = words.get(item.filewords, 0) + 1
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.alpha), "ss_network_args": json.dumps({}),
        "ss_output_name": name, "ss_base_model_version": version,
        "ss_v2": str(version.startswith("sd_v2")),
        "ss_sd_model_name": checkpoint_name, "ss_resolution": f"({size}, {size})",
        "ss_training_started_at": f"{started:.3f}", "ss_training_finished_at": f"{time.time():.3f}",
        "ss_learning_rate": config.learn_rate, "ss_max_train_steps": str(config.steps),
        "ss_steps": str(steps), "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.gradient_step), "ss_seed": str(config.seed),
        "ss_num_train_images": str(len(items)), "ss_clip_skip": "None",
        "ss_network_train_unet_only": str(not config.text_encoder),
        "ss_tag_frequency": json.dumps({"concept": words}),
        "modelspec.sai_model_spec": "1.0.0", "modelspec.title": name,
        "modelspec.architecture": _architecture(version) + "/lora",
        "modelspec.resolution": f"{size}x{size}",
    }


def _architecture(version: str) -> str:
    return {"sd_v1": "stable-diffusion-v1", "sd_v2": "stable-diffusion-v2-512",
            "sd_v2_v": "stable-diffusion-v2-768-v"}.get(version, "stable-diffusion-xl-v1-base")


def save_lora(network: LoraNetwork, path: Path, metadata: dict[str, str]) -> Path:
    """Write the kohya file atomically (fp16 tensors, as kohya saves by default)."""
    return save_model_file(network.kohya_state_dict(), path, metadata)


def lora_training(model: StableDiffusionModel, *, out: Path, items: Sequence[ConceptItem],
                  config: LoraTrainingConfig, tokenizer: ClipTokenizer,
                  template: Sequence[str] = ("[filewords]",),
                  log_dir: Path | None = None, checkpoint_name: str = "",
                  ) -> Generator[TrainingStep, str | None, TrainedLora]:
    """Train a new LoRA on `items` and write it to `out` (a generator: one event per step)."""
    schedule = config.validate()
    model.requires_grad_(False)  # only the LoRA factors learn
    generator = torch.Generator().manual_seed(config.seed)
    network = LoraNetwork(model=model, rank=config.rank, alpha=config.alpha,
                          text_encoder=config.text_encoder, generator=generator)
    unet = network.unet_call(model.unet)
    spec = model.family.text_encoders[0]
    encoder = (network.text_encoder_call(spec.name, model.text_encoders[spec.name])
               if config.text_encoder else None)
    cache = LatentCache(model, items, method=config.latent_sampling_method, generator=generator)
    batches = Batches(len(items), batch_size=config.batch_size, seed=config.seed)
    options = PromptOptions(name=out.stem, template=tuple(template),
                            shuffle_tags=config.shuffle_tags, tag_drop_out=config.tag_drop_out)
    rng, alphas, started = random.Random(config.seed), training_alphas(model), time.time()

    def micro_loss() -> torch.Tensor:
        rows = batches.next()
        prompts = [make_prompt(items[row].filewords, options, rng) for row in rows]
        context = encode_prompts(model, tokenizer, prompts, text_encoder=encoder)
        return noise_prediction_loss(unet, cache.latents(rows, generator), context,
                                     alphas_cumprod=alphas, generator=generator,
                                     min_snr_gamma=config.min_snr_gamma)

    def write(path: Path, step: int) -> Path:
        return save_lora(network, path,
                         kohya_metadata(name=out.stem, family=model.family, config=config,
                                        checkpoint_name=checkpoint_name,
                                        started=started, steps=step, items=items))

    total = schedule.total_steps(config.steps)
    loop = StepLoop(schedule=schedule, total_steps=total, gradient_step=config.gradient_step,
                    clip_grad_mode=config.clip_grad_mode, clip_grad_value=config.clip_grad_value)
    result = TrainedLora(path=out, step=0)
    preview_prompt = make_prompt(items[0].filewords, replace(options, tag_drop_out=0.0),
                                 random.Random(0))

    def preview(step: int) -> None:
        with torch.no_grad():
            image = preview_image(model, tokenizer, preview_prompt, seed=config.seed, unet=unet,
                                  text_encoder=encoder)
        save_preview(image, log_dir / "images", out.stem, step)

    logging = log_dir is not None
    result.step = yield from with_checkpoints(
        optimise(list(network.parameters()), loop, micro_loss), losses=result.losses,
        save_every=config.save_every, preview_every=config.preview_every,
        save=((lambda step: write(log_dir / "Lora" / f"{out.stem}-{step}.safetensors", step))
              if logging else None),
        preview=preview if logging else None)
    result.interrupted = result.step < total
    write(out, result.step)
    return result


def train_new_lora(model_path: Path, *, config: LoraTrainingConfig, out: Path,
                   data_root: Path | None = None,
                   template: Sequence[str] = ("[filewords]",), word: str = "bar",
                   images: int = BAR_IMAGES,
                   log_dir: Path | None = None, progress: bool = True) -> TrainedLora:
    """Train a LoRA on `data_root`'s images (A1111's dataset folder) or, without one, on
    `images` pictures of the held-out bar captioned with `word`; writes `out`."""
    model = load_model(model_path)
    size = model.family.native_resolution
    items = (folder_items(data_root, width=size, height=size) if data_root is not None
             else bar_items(word, count=images, seed=config.seed + 100, resolution=size))
    training = lora_training(model, out=out, items=items, config=config, tokenizer=ClipTokenizer(),
                             template=template, log_dir=log_dir, checkpoint_name=model_path.stem)
    return drive(training, progress=progress, desc="lora")


def train_bar_lora(model_path: Path = DEFAULT_MODEL, *,
                   config: LoraTrainingConfig = BAR_LORA_CONFIG,
                   out: Path = DEFAULT_OUT, **options) -> TrainedLora:
    """The held-out bar of the demo set (the demo recipe's extra stage): with
    `<lora:easel-bar:1>`, "bar" in a prompt of the shapes family should draw a bar."""
    return train_new_lora(model_path, config=config, out=out, **options)


def main(argv: Sequence[str] | None = None) -> None:
    parser = concept_parser("Train a LoRA (kohya format) on a frozen model.",
                            defaults=BAR_LORA_CONFIG,
                            out=DEFAULT_OUT, out_help="the .safetensors to write")
    parser.add_argument("--rank", type=int, default=BAR_LORA_CONFIG.rank)
    parser.add_argument("--alpha", type=float, default=BAR_LORA_CONFIG.alpha)
    parser.add_argument("--text-encoder", action="store_true", help="also train the text encoder")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = replace(BAR_LORA_CONFIG, steps=args.steps, learn_rate=args.learn_rate,
                     batch_size=args.batch_size,
                     rank=args.rank, alpha=args.alpha, text_encoder=args.text_encoder,
                     seed=args.seed)
    template = (read_template(args.template.parent, args.template.name) if args.template
                else ("[filewords]",))
    began = time.perf_counter()
    try:
        result = train_new_lora(args.model, config=config, out=args.out, data_root=args.data_root,
                                template=template)
    except ParamsError as error:
        parser.error(str(error))
    minutes = (time.perf_counter() - began) / 60
    print(f"wrote {result.path} after {result.step} steps in {minutes:.1f} min")


if __name__ == "__main__":
    main()
