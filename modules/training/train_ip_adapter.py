"""Training a tiny IP-Adapter on the demo model: a reference picture that gives the colour.

IP-Adapter (Ye et al., 2023; `modules.nn.ip_adapter`) reads a reference picture through a
frozen CLIP image encoder and adds decoupled cross-attention to image tokens in every
attn2 layer of the frozen U-Net. Here:

1. the image encoder is a tiny transformers `CLIPVisionModelWithProjection` (32x32
   pictures, patches of 8, 2 layers of width 64), seeded and briefly trained to name the
   shape, its colour, the background and the position of demo pictures from its
   `image_embeds` (linear heads, thrown away), then frozen and shipped beside the adapter
   (`models/clip_vision/`), as the real adapters ship with their CLIP encoder;
2. the plain adapter (4 tokens) learns, with the demo U-Net, its text encoder and the
   image encoder frozen, the usual eps loss (1500 steps of 32) on pictures whose caption
   names no colour and no background ("a large circle in the center", like the user's
   prompt), with the image tokens of *another* picture of the same colour (other shape,
   place, size and background). The only source of the colour is then the reference.
   `to_k_ip` / `to_v_ip` start as copies of each layer's `to_k` / `to_v` (the paper's
   initialisation) and the projection is first fitted so that the tokens are the text
   encoder's hidden states of the colour's name: the adapter starts out attending to a
   colour word, and the eps loss then only has to sharpen it (without that start,
   neighbouring colours - blue / purple, orange / red - were confused). 10 % of the
   samples drop the picture (zero image embeds, which is what the negative rows get at
   inference, so CFG amplifies the reference) and 10 % the caption.

`ip_adapter_demo.measure()` generates through `processing.txt2img` with the ControlNet extension's
IP-Adapter unit, as the API does.

    python -m modules.training.train_ip_adapter \\
        --out models/ControlNet/easel-demo-ip-adapter.safetensors \\
        --encoder-out models/clip_vision/easel-demo-clip-vision.safetensors
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.loader import inspect_checkpoint
from modules.nn.ip_adapter import (
    IPAdapter,
    IPAdapterConfig,
    IPAdapterPatch,
    clip_pixels,
    cross_attention_layers,
)
from modules.nn.unet_patches import UNetPatches
from modules.sampling.denoiser import scaled_linear_alphas_cumprod
from modules.training.captions import token_ids
from modules.training.evaluate import load_model
from modules.training.loop import EMA, Trainer
from modules.training.shapes import (
    COLORS,
    POSITION_JITTER,
    POSITIONS,
    SHAPES,
    SIZE_JITTER,
    ShapeLabels,
    article,
    random_truth,
    render,
)
from modules.training.train_vae import encode_latents

DEFAULT_BASE = Path("models/Stable-diffusion/easel-demo.safetensors")
DEFAULT_OUT = Path("models/ControlNet/easel-demo-ip-adapter.safetensors")
DEFAULT_ENCODER_OUT = Path("models/clip_vision/easel-demo-clip-vision.safetensors")
ENCODER_HEADS = 4


@dataclass(frozen=True, kw_only=True)
class IPAdapterTrainingConfig:
    """How long and on what to train the encoder and the adapter."""

    steps: int = 1500
    batch_size: int = 32
    dataset_size: int = 2048
    learning_rate: float = 1e-3
    image_dropout: float = 0.1
    caption_dropout: float = 0.1
    # Captions never name the background: the user's prompt ("a large circle in the
    # center") names neither colour, so training should see that kind of caption only.
    background_omitted: float = 1.0
    # Timesteps drawn as T * u**(1 / bias): 1 is uniform, 2 draws noisier steps more often
    # (mean 2/3 T), where a flat shape's colour is decided.
    timestep_bias: float = 1.0
    # Steps of fitting the image projection, before the eps loss, so that a reference's
    # tokens are the text encoder's hidden states of its colour's name ("red": BOS, red,
    # EOS, ...) and "no image" those of "": with `to_k_ip` / `to_v_ip` copied from the
    # text ones, the adapter starts out attending to the colour word. 0 skips it.
    colour_init_steps: int = 300
    n_tokens: int = 4
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.98
    encoder_steps: int = 400
    encoder_learning_rate: float = 2e-3
    resolution: int = 64
    seed: int = 0


def encoder_config():
    """The tiny CLIP image encoder: 32x32 pictures, 16 patches, width 64, 2 layers."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=64, intermediate_size=128, projection_dim=64,
                            num_hidden_layers=2, num_attention_heads=ENCODER_HEADS,
                            image_size=32, patch_size=8, hidden_act="gelu")


def jittered(truth: ShapeLabels, rng: np.random.Generator, resolution: int) -> np.ndarray:
    offset = tuple(rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2))
    scale = 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    return render(truth, resolution=resolution, offset=offset, scale=scale)


def same_colour_reference(truth: ShapeLabels, rng: np.random.Generator) -> ShapeLabels:
    """Another random picture whose shape has `truth`'s colour."""
    other = random_truth(rng)
    backgrounds = [c for c in COLORS if c != truth.color]
    return ShapeLabels(shape=other.shape, color=truth.color,
                       background=backgrounds[rng.integers(len(backgrounds))],
                       position=other.position, size=other.size)


def colourless_caption(truth: ShapeLabels, *, with_background: bool) -> str:
    """'a large circle in the center' (+ ' on a blue background'): never the shape's colour."""
    words = " ".join(w for w in (truth.size, truth.shape) if w)
    text = f"{article(words)} {words}"
    if truth.position == "center":
        text += " in the center"
    elif truth.position is not None:
        text += f" at the {truth.position}"
    if with_background:
        text += f" on {article(truth.background)} {truth.background} background"
    return text


def pixels_of(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """CLIP-preprocessed (N, 3, size, size) pictures, as `encode_reference` makes them."""
    return torch.cat([clip_pixels(Image.fromarray(image), size) for image in images])


def train_encoder(config: IPAdapterTrainingConfig, *, progress: bool = False):
    """The tiny image encoder, seeded, trained to name the four attributes, then frozen."""
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(config.seed + 11)
    encoder = CLIPVisionModelWithProjection(encoder_config())
    rng = np.random.default_rng([config.seed, 11])
    truths = [random_truth(rng) for _ in range(config.dataset_size)]
    pixels = pixels_of([jittered(t, rng, config.resolution) for t in truths],
                       encoder.config.image_size)
    names = {"shape": SHAPES, "color": COLORS, "background": COLORS,
             "position": tuple(POSITIONS)}
    labels = {key: torch.tensor([values.index(getattr(t, key)) for t in truths])
              for key, values in names.items()}
    width = encoder.config.projection_dim
    heads = torch.nn.ModuleDict({key: torch.nn.Linear(width, len(values))
                                 for key, values in names.items()})
    trainer = Trainer(parameters=[*encoder.parameters(), *heads.parameters()],
                      learning_rate=config.encoder_learning_rate,
                      total_steps=config.encoder_steps, warmup_steps=20)
    generator = torch.Generator().manual_seed(config.seed + 12)
    encoder.train()
    for _ in tqdm(range(config.encoder_steps), desc="encoder", disable=not progress,
                  mininterval=2.0):
        rows = torch.randint(len(truths), (64,), generator=generator)
        embeds = encoder(pixels[rows]).image_embeds
        loss = sum(F.cross_entropy(head(embeds), labels[key][rows])
                   for key, head in heads.items())
        trainer.step(loss)
    encoder.eval().requires_grad_(False)
    if progress:  # the colour must be readable from image_embeds: held-out accuracy
        test = np.random.default_rng([config.seed, 17])
        truths = [random_truth(test) for _ in range(256)]
        embeds = encoder(pixels_of([jittered(t, test, config.resolution) for t in truths],
                                   encoder.config.image_size)).image_embeds
        for key, values in names.items():
            found = heads[key](embeds).argmax(-1)
            right = sum(values[int(i)] == getattr(t, key) for i, t in zip(found, truths))
            print(f"encoder {key} accuracy on new pictures: {right / len(truths):.3f}")
    return encoder


@dataclass(frozen=True, kw_only=True)
class ReferenceSet:
    """Encoded training set: latents, the references' image_embeds, caption token ids."""

    means: torch.Tensor
    stds: torch.Tensor
    embeds: torch.Tensor  # (N, projection_dim)
    token_ids: torch.Tensor  # (N, 77)
    colours: torch.Tensor  # (N,) index of the reference's colour in COLORS


def build_reference_set(*, vae, encoder, tokenizer: ClipTokenizer,
                        config: IPAdapterTrainingConfig, progress: bool = False) -> ReferenceSet:
    images, references, captions, colours = [], [], [], []
    for index in range(config.dataset_size):
        rng = np.random.default_rng([config.seed, index, 13])
        truth = random_truth(rng)
        colours.append(COLORS.index(truth.color))
        images.append(jittered(truth, rng, config.resolution))
        references.append(jittered(same_colour_reference(truth, rng), rng, config.resolution))
        captions.append(colourless_caption(
            truth, with_background=bool(rng.random() >= config.background_omitted)))
    means, stds = encode_latents(vae, np.stack(images), progress=progress)
    pixels = pixels_of(references, encoder.config.image_size)
    embeds = torch.cat([encoder(pixels[i:i + 256]).image_embeds
                        for i in range(0, len(pixels), 256)])
    return ReferenceSet(means=means, stds=stds, embeds=embeds,
                        token_ids=token_ids(tokenizer, captions), colours=torch.tensor(colours))


def fit_colour_tokens(adapter: IPAdapter, *, text_encoder, tokenizer: ClipTokenizer,
                      data: ReferenceSet, config: IPAdapterTrainingConfig) -> float:
    """Fit `image_proj` so each reference's tokens are the first `n_tokens` hidden states
    of its colour's name, and zero embeds' those of ""; returns the last MSE."""
    with torch.no_grad():
        names = text_encoder(token_ids(tokenizer, [*COLORS, ""])).hidden[:, :config.n_tokens]
    embeds = torch.cat([data.embeds, torch.zeros_like(data.embeds[:1])])
    targets = names[torch.cat([data.colours, torch.tensor([len(COLORS)])])]
    optimizer = torch.optim.Adam(adapter.image_proj.parameters(), lr=1e-2)
    loss = torch.zeros(())
    for _ in range(config.colour_init_steps):
        loss = F.mse_loss(adapter.image_tokens(embeds), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss)


def adapter_for(unet, *, image_dim: int, n_tokens: int) -> IPAdapter:
    """A plain adapter whose image keys / values start as the U-Net's text ones."""
    base = unet.config
    layers = cross_attention_layers(base)
    config = IPAdapterConfig(kind="plain", image_dim=image_dim, context_dim=base.context_dim,
                             n_tokens=n_tokens, layer_widths=tuple(w for _, w in layers))
    adapter = IPAdapter(config=config, base=base)
    attn2 = [module for name, module in unet.named_modules() if name.endswith(".attn2")]
    if len(attn2) != len(layers):  # named_modules order: input, middle, output blocks
        raise ValueError(f"{len(attn2)} attn2 modules for {len(layers)} adapter layers")
    by_key = dict(zip(_module_keys(unet), attn2, strict=True))
    with torch.no_grad():
        for key, index in adapter.layer_index.items():
            adapter.layers[index].to_k_ip.weight.copy_(by_key[key].to_k.weight)
            adapter.layers[index].to_v_ip.weight.copy_(by_key[key].to_v.weight)
    return adapter


def _module_keys(unet) -> list[tuple[str, int, int]]:
    """(stage, block, transformer) of each attn2 module in `named_modules` order."""
    keys = []
    for name, _ in unet.named_modules():
        if not name.endswith(".attn2"):
            continue
        parts = name.split(".")
        if parts[0] == "middle_block":
            keys.append(("middle", 0, int(parts[3])))
        else:
            stage = "input" if parts[0] == "input_blocks" else "output"
            keys.append((stage, int(parts[1]), int(parts[4])))
    return keys


def ip_loss(*, adapter: IPAdapter, unet, text_encoder, data: ReferenceSet, rows: torch.Tensor,
            scale_factor: float, alphas_cumprod: torch.Tensor, config: IPAdapterTrainingConfig,
            empty_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Min-SNR-weighted eps MSE of the frozen U-Net with the adapter's decoupled attention."""
    noise = torch.randn(data.means[rows].shape, generator=generator)
    latents = scale_factor * (data.means[rows] + data.stds[rows] * noise)
    ids = data.token_ids[rows].clone()
    ids[torch.rand(len(rows), generator=generator) < config.caption_dropout] = empty_ids
    embeds = data.embeds[rows].clone()
    embeds[torch.rand(len(rows), generator=generator) < config.image_dropout] = 0.0
    with torch.no_grad():
        context = text_encoder(ids).hidden
    draws = torch.rand(len(rows), generator=generator) ** (1 / config.timestep_bias)
    timesteps = (draws * len(alphas_cumprod)).long().clamp(max=len(alphas_cumprod) - 1)
    eps = torch.randn(latents.shape, generator=generator)
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * eps
    tokens = adapter.image_tokens(embeds)
    patch = IPAdapterPatch(adapter=adapter, cond_tokens=tokens, uncond_tokens=tokens,
                           weight=1.0, row_images=list(range(len(rows))),
                           row_is_uncond=[False] * len(rows))
    prediction = unet(noisy, timesteps, context, patches=UNetPatches((patch,)))
    per_sample = (prediction - eps).pow(2).mean(dim=(1, 2, 3))
    snr = abar.flatten() / (1 - abar.flatten())
    return (per_sample * snr.clamp(max=config.min_snr_gamma) / snr).mean()


def train_ip_adapter(*, base: str | os.PathLike[str], config: IPAdapterTrainingConfig,
                     progress: bool = True, snapshot_steps: Sequence[int] = (),
                     on_snapshot=None):
    """Train the encoder, then the adapter; returns (adapter (EMA weights), encoder, losses).

    `on_snapshot(step, adapter, encoder)` gets a copy of the EMA adapter after each of
    `snapshot_steps` (to measure a run before it ends).
    """
    _, family = inspect_checkpoint(base)
    model = load_model(base)
    unet, vae = model.model.diffusion_model, model.first_stage_model
    text_encoder = model.text_encoders[family.text_encoders[0].name]
    for frozen in (unet, vae, text_encoder):
        frozen.requires_grad_(False)
    encoder = train_encoder(config, progress=progress)
    tokenizer = ClipTokenizer()
    with torch.no_grad():
        data = build_reference_set(vae=vae, encoder=encoder, tokenizer=tokenizer, config=config,
                                   progress=progress)
    torch.manual_seed(config.seed)
    adapter = adapter_for(unet, image_dim=encoder.config.projection_dim,
                          n_tokens=config.n_tokens).train()
    if config.colour_init_steps:
        error = fit_colour_tokens(adapter, text_encoder=text_encoder, tokenizer=tokenizer,
                                  data=data, config=config)
        if progress:
            print(f"image tokens fitted to the colour names: MSE {error:.4f}")
    trainer = Trainer(parameters=adapter.parameters(), learning_rate=config.learning_rate,
                      total_steps=config.steps, warmup_steps=min(50, config.steps // 10 + 1))
    ema = EMA(modules=[adapter], decay=config.ema_decay)
    alphas_cumprod = scaled_linear_alphas_cumprod(family.schedule)
    generator = torch.Generator().manual_seed(config.seed + 2)
    empty_ids = token_ids(tokenizer, [""])[0]
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="ip-adapter", disable=not progress, mininterval=2.0)
    for _ in bar:
        rows = torch.randint(config.dataset_size, (config.batch_size,), generator=generator)
        loss = ip_loss(adapter=adapter, unet=unet, text_encoder=text_encoder, data=data,
                       rows=rows, scale_factor=family.vae.scale_factor,
                       alphas_cumprod=alphas_cumprod, config=config, empty_ids=empty_ids,
                       generator=generator)
        losses.append(trainer.step(loss))
        ema.update()
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        if on_snapshot is not None and len(losses) in snapshot_steps:
            on_snapshot(len(losses), ema.averaged_copies()[0].eval(), encoder)
    ema.copy_to_modules()
    return adapter.eval().requires_grad_(False), encoder, losses


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the demo model's IP-Adapter and its "
                                                 "image encoder.")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help="the demo checkpoint")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the adapter to write")
    parser.add_argument("--encoder-out", type=Path, default=DEFAULT_ENCODER_OUT,
                        help="the image encoder to write")
    parser.add_argument("--steps", type=int, default=IPAdapterTrainingConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float,
                        default=IPAdapterTrainingConfig.learning_rate)
    parser.add_argument("--timestep-bias", type=float,
                        default=IPAdapterTrainingConfig.timestep_bias)
    parser.add_argument("--n-tokens", type=int, default=IPAdapterTrainingConfig.n_tokens)
    parser.add_argument("--colour-init-steps", type=int,
                        default=IPAdapterTrainingConfig.colour_init_steps)
    parser.add_argument("--snapshot-steps", type=int, nargs="*", default=(),
                        help="also write the EMA adapter after these steps (<out>-<step>)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    from modules.training.ip_adapter_demo import save_encoder, save_ip_adapter  # imports us
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = IPAdapterTrainingConfig(steps=args.steps, seed=args.seed,
                                     learning_rate=args.learning_rate,
                                     timestep_bias=args.timestep_bias, n_tokens=args.n_tokens,
                                     colour_init_steps=args.colour_init_steps)
    args.encoder_out.parent.mkdir(parents=True, exist_ok=True)

    def snapshot(step: int, adapter: IPAdapter, encoder) -> None:
        save_encoder(encoder, args.encoder_out)
        save_ip_adapter(adapter, args.out.with_name(f"{args.out.stem}-{step}{args.out.suffix}"),
                        base_title=args.base.stem)
        print(f"snapshot at step {step} after {(time.perf_counter() - start) / 60:.1f} min",
              flush=True)

    adapter, encoder, _ = train_ip_adapter(base=args.base, config=config,
                                           snapshot_steps=args.snapshot_steps,
                                           on_snapshot=snapshot)
    encoder_path = save_encoder(encoder, args.encoder_out)
    path = save_ip_adapter(adapter, args.out, base_title=args.base.stem)
    minutes = (time.perf_counter() - start) / 60
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {encoder_path} "
          f"({encoder_path.stat().st_size / 1e6:.2f} MB) in {minutes:.1f} min")


if __name__ == "__main__":
    main()
