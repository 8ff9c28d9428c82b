"""Retrain Easel's demo model from nothing, reproducibly, and write the shipped checkpoint.

    nice -n 19 python -m modules.training.demo --out models/Stable-diffusion/easel-demo.safetensors

Stages (each with a tqdm progress bar):

1. the autoencoder on freshly generated shapes (`train_vae`);
2. its decoder alone, encoder frozen: sharper edges, the same latents (`finetune_decoder`);
3. the training set encoded once (captions x a few images each) and the latent scale
   factor measured on it;
4. the U-Net trained against the CLIP text encoder (`train_unet`; the encoder stays at
   its seeded random init unless `freeze_text_encoder` is off);
5. the EMA weights written as an fp16 SD1 checkpoint;
6. with `--extras` (the default), what ships beside it, each trained on the new
   checkpoint with everything else frozen: the silhouette ControlNet
   (`train_controlnet`), the held-out bar's textual-inversion embedding
   (`train_embedding`) and LoRA (`train_lora`), the silhouette T2I-Adapter
   (`train_t2i_adapter`, 12 minutes on one thread) and the IP-Adapter with its tiny image
   encoder (`train_ip_adapter`, 11-16 minutes).

Every random draw comes from `--seed`, and torch runs on one thread (`--threads`), so a
rerun on the same machine gives the same weights. Stages 2 and 4 depend only on stage
1's encoder, so they may also run side by side. `--scale 0.05` is a quick trial;
`tests/test_training_smoke.py` runs every stage at 0.2 %.

Timing: the whole command, every stage and the extras, took **54.5 minutes** of wall
time on 2026-11-26 (one thread on the 2-core build machine, the other core busy with
benchmarks; peak RSS 1.27 GB). Its checkpoint scores, with `python -m
modules.training.evaluate` (24 prompts x 4 seeds): shape colour and background both
right 0.958, shape 0.948, position 1.00; its bar LoRA 0.75, its embedding 0.12, plain
prompts 0.00 (`concept_eval`). The shipped weights came from these stages run one after
another from the fp16 checkpoints in between, with the seeds this recipe gives them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.families import Family
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.text_encoders import TextEncoder
from modules.nn.unet import UNetModel
from modules.training.captions import token_ids
from modules.training.checkpoint import save_checkpoint
from modules.training.demo_config import DEMO_FAMILY, with_scale_factor
from modules.training.loop import EMA
from modules.training.train_controlnet import ControlNetTrainingConfig
from modules.training.train_ip_adapter import IPAdapterTrainingConfig
from modules.training.train_t2i_adapter import T2IAdapterTrainingConfig
from modules.training.train_unet import UNetTrainingConfig, build_latent_set, train_unet
from modules.training.train_vae import (
    DecoderTrainingConfig,
    VAETrainingConfig,
    finetune_decoder,
    measure_scale_factor,
    train_vae,
)

DEFAULT_OUT = Path("models/Stable-diffusion/easel-demo.safetensors")
MODELS = DEFAULT_OUT.parent.parent


@dataclass(frozen=True, kw_only=True)
class DemoRecipe:
    """Everything that decides the demo's weights."""

    family: Family = DEMO_FAMILY
    vae: VAETrainingConfig = VAETrainingConfig()
    decoder: DecoderTrainingConfig = DecoderTrainingConfig()
    unet: UNetTrainingConfig = UNetTrainingConfig()
    # Trained jointly from scratch, the text encoder collapsed the position words (their
    # encodings differed by ~1 %) and the U-Net placed shapes by the noise alone. A
    # frozen, randomly initialised CLIP keeps every token distinct, and the U-Net's
    # cross-attention learns what the words mean: position went from 0.21 to 1.0.
    freeze_text_encoder: bool = True
    # Further U-Net rounds at a lower rate, each on a freshly drawn training set: shape
    # colour and background both right went from 0.48 to 0.80 with the first round and
    # to 0.94 with the second (24 prompts x 4 seeds).
    refine: tuple[UNetTrainingConfig, ...] = (
        UNetTrainingConfig(steps=1200, learning_rate=3e-4, seed=1),
        UNetTrainingConfig(steps=1200, learning_rate=3e-4, seed=2),
    )

    controlnet: ControlNetTrainingConfig = ControlNetTrainingConfig(steps=1200)
    t2i_adapter: T2IAdapterTrainingConfig = T2IAdapterTrainingConfig()
    ip_adapter: IPAdapterTrainingConfig = IPAdapterTrainingConfig()

    def seeded(self, seed: int) -> "DemoRecipe":
        """The same recipe with every stage seeded from `seed`."""
        return replace(self, vae=replace(self.vae, seed=seed),
                       decoder=replace(self.decoder, seed=seed), unet=replace(self.unet, seed=seed),
                       controlnet=replace(self.controlnet, seed=seed),
                       t2i_adapter=replace(self.t2i_adapter, seed=seed),
                       ip_adapter=replace(self.ip_adapter, seed=seed),
                       refine=tuple(replace(r, seed=seed + 1 + i)
                                    for i, r in enumerate(self.refine)))

    def scaled(self, fraction: float) -> "DemoRecipe":
        """A shorter run: step counts and the training set multiplied by `fraction`."""
        def part(n: int) -> int:
            return max(2, round(n * fraction))
        return replace(
            self,
            vae=replace(self.vae, steps=part(self.vae.steps)),
            decoder=replace(self.decoder, steps=part(self.decoder.steps)),
            unet=replace(self.unet, steps=part(self.unet.steps),
                         dataset_groups=part(self.unet.dataset_groups)),
            refine=tuple(replace(r, steps=part(r.steps), dataset_groups=part(r.dataset_groups))
                         for r in self.refine),
            controlnet=replace(self.controlnet, steps=part(self.controlnet.steps),
                               dataset_size=part(self.controlnet.dataset_size)),
            t2i_adapter=replace(self.t2i_adapter, steps=part(self.t2i_adapter.steps),
                                dataset_size=part(self.t2i_adapter.dataset_size)),
            ip_adapter=replace(self.ip_adapter, steps=part(self.ip_adapter.steps),
                               dataset_size=part(self.ip_adapter.dataset_size),
                               encoder_steps=part(self.ip_adapter.encoder_steps),
                               colour_init_steps=part(self.ip_adapter.colour_init_steps)),
        )


def train_demo(recipe: DemoRecipe, *, out: Path, progress: bool = True,
               vae: AutoencoderKL | None = None, snapshot_every: int = 0) -> Path:
    """Run every stage of `recipe` and write the checkpoint to `out`.

    :param vae: an autoencoder already trained by this recipe's VAE stages (skips them)
    :param snapshot_every: also write the EMA weights every this many U-Net steps, to
        `out` with `-step{N}` added to its stem (0: never)
    """
    if vae is None:
        vae = train_vae(model_config=recipe.family.vae, training=recipe.vae, progress=progress)
        vae = finetune_decoder(vae, training=recipe.decoder, progress=progress)
    tokenizer = ClipTokenizer()
    data = build_latent_set(vae=vae, tokenizer=tokenizer, groups=recipe.unet.dataset_groups,
                            repeats=recipe.unet.repeats, seed=recipe.unet.seed + 3,
                            resolution=recipe.unet.resolution, progress=progress)
    family = with_scale_factor(recipe.family, measure_scale_factor(data.means, data.stds))
    torch.manual_seed(recipe.unet.seed)
    unet = UNetModel(config=family.unet)
    text_encoder = TextEncoder(config=family.text_encoders[0].config)
    text_encoder.requires_grad_(not recipe.freeze_text_encoder)

    # Intermediate checkpoints from the running average, for watching a long run.
    def snapshot(step: int, ema: EMA) -> None:
        unet_avg, text_avg = ema.averaged_copies()
        save_checkpoint(out.with_name(f"{out.stem}-step{step}{out.suffix}"), family=family,
                        unet=unet_avg, vae=vae, text_encoder=text_avg)

    train_unet(unet=unet, text_encoder=text_encoder, data=data,
               scale_factor=family.vae.scale_factor, schedule=family.schedule, training=recipe.unet,
               empty_ids=token_ids(tokenizer, [""])[0],
               progress=progress, snapshot=snapshot, snapshot_every=snapshot_every)
    for round_index, refine in enumerate(recipe.refine):
        data = build_latent_set(vae=vae, tokenizer=tokenizer, groups=refine.dataset_groups,
                                repeats=refine.repeats, seed=recipe.unet.seed + 4 + round_index,
                                resolution=refine.resolution, progress=progress)
        train_unet(unet=unet, text_encoder=text_encoder, data=data,
                   scale_factor=family.vae.scale_factor, schedule=family.schedule,
                   training=refine, empty_ids=token_ids(tokenizer, [""])[0], progress=progress)
    return save_checkpoint(out, family=family, unet=unet, vae=vae, text_encoder=text_encoder)


def train_extras(recipe: DemoRecipe, *, checkpoint: Path, models: Path,
                 progress: bool = True) -> list[Path]:
    """The files that ship beside the demo checkpoint, trained on it (stage 6)."""
    from modules.training.ip_adapter_demo import save_encoder, save_ip_adapter
    from modules.training.train_controlnet import save_controlnet, train_controlnet
    from modules.training.train_embedding import BAR_EMBEDDING_CONFIG, train_bar_embedding
    from modules.training.train_ip_adapter import train_ip_adapter
    from modules.training.train_lora import BAR_LORA_CONFIG, train_bar_lora
    from modules.training.train_t2i_adapter import train_t2i_adapter

    controlnet, _ = train_controlnet(base=checkpoint, config=recipe.controlnet, progress=progress)
    written = [save_controlnet(controlnet,
                               models / "ControlNet" / "easel-demo-silhouette.safetensors",
                               base_title=checkpoint.stem)]
    fraction = recipe.controlnet.steps / ControlNetTrainingConfig(steps=1200).steps
    # The embedding's training log (and its .pt twin) go beside the models folder.
    log = {"log_dir": models.parent / "textual_inversion" / "easel-bar"}
    for train, config, folder, options in (
            (train_bar_embedding, BAR_EMBEDDING_CONFIG, "embeddings", log),
            (train_bar_lora, BAR_LORA_CONFIG, "Lora", {})):
        config = replace(config, steps=max(2, round(config.steps * fraction)))
        out = models / folder / "easel-bar.safetensors"
        train(checkpoint, config=config, out=out, progress=progress, **options)
        written.append(out)
    written.append(train_t2i_adapter(
        checkpoint, recipe.t2i_adapter,
        models / "ControlNet" / "easel-demo-t2i-silhouette.safetensors", progress=progress))
    adapter, encoder, _ = train_ip_adapter(base=checkpoint, config=recipe.ip_adapter,
                                           progress=progress)
    written.append(save_encoder(encoder, models / "clip_vision" /
                                "easel-demo-clip-vision.safetensors"))
    written.append(save_ip_adapter(adapter, models / "ControlNet" /
                                   "easel-demo-ip-adapter.safetensors",
                                   base_title=checkpoint.stem))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train Easel's demo model (shapes) from scratch.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the .safetensors to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the full step counts (0.1 for a quick trial)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--snapshot-every", type=int, default=0,
                        help="also save the averaged weights every N U-Net steps")
    parser.add_argument("--no-extras", dest="extras", action="store_false",
                        help="skip the ControlNet, embedding and LoRA trained on the result")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = DemoRecipe().seeded(args.seed)
    if args.scale != 1.0:
        recipe = recipe.scaled(args.scale)
    start = time.perf_counter()
    path = train_demo(recipe, out=args.out, snapshot_every=args.snapshot_every)
    if args.extras:
        train_extras(recipe, checkpoint=path, models=args.out.parent.parent)
    minutes = (time.perf_counter() - start) / 60
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {minutes:.1f} min")


if __name__ == "__main__":
    main()
