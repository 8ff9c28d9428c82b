"""Short smoke runs of every training loop on tiny configs: they run and they learn."""

from dataclasses import replace

import pytest
import torch

from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.loader import inspect_checkpoint, load_state_dict
from modules.models.sd_model import StableDiffusionModel
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.text_encoders import TextEncoder
from modules.nn.unet import UNetModel
from modules.sampling.denoiser import scaled_linear_alphas_cumprod
from modules.training.captions import token_ids
from modules.training.checkpoint import save_checkpoint
from modules.training.demo_config import DEMO_FAMILY, demo_metadata, with_scale_factor
from modules.training.loop import EMA, Trainer
from modules.training.shapes import make_batch
from modules.training.train_unet import (
    UNetTrainingConfig,
    build_latent_set,
    diffusion_loss,
    draw_batch,
    train_unet,
)
from modules.training.train_vae import (
    DecoderTrainingConfig,
    VAETrainingConfig,
    finetune_decoder,
    images_to_tensor,
    measure_scale_factor,
    train_vae,
    vae_loss,
)
from tests.helpers.threads import one_thread  # noqa: F401 (fixture)
from tests.tiny import TINY_SD15

RESOLUTION = 32
# The tiny VAE with the demo's normalisation (one group), which learns flat colours fast.
SMOKE_VAE = replace(TINY_SD15.vae, ch=8, norm_num_groups=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return train_vae(model_config=SMOKE_VAE, progress=False,
                     training=VAETrainingConfig(steps=40, batch_size=4, learning_rate=3e-3,
                                                resolution=RESOLUTION, seed=0))


def fixed_vae_loss(vae: AutoencoderKL) -> float:
    images, _ = make_batch(99, 0, 8, resolution=RESOLUTION)
    with torch.no_grad():
        loss, _ = vae_loss(vae, images_to_tensor(images),
                           generator=torch.Generator().manual_seed(0), kl_weight=1e-4)
    return float(loss)


def test_vae_loop_reduces_reconstruction_loss(tiny_vae):
    torch.manual_seed(0)
    untrained = AutoencoderKL(config=SMOKE_VAE)
    assert fixed_vae_loss(tiny_vae) < 0.75 * fixed_vae_loss(untrained)


def test_decoder_finetune_trains_only_the_decoder(tiny_vae):
    vae = AutoencoderKL(config=SMOKE_VAE)
    vae.load_state_dict(tiny_vae.state_dict())
    # A confident encoder (tiny posterior std), as one trained for longer is.
    with torch.no_grad():
        vae.quant_conv.bias[SMOKE_VAE.embed_dim:] = -10.0
    encoder = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    before = fixed_vae_loss(vae)
    finetune_decoder(vae, progress=False,
                     training=DecoderTrainingConfig(steps=30, batch_size=4, learning_rate=3e-4,
                                                    resolution=RESOLUTION))
    assert all(torch.equal(v, vae.encoder.state_dict()[k]) for k, v in encoder.items())
    assert not all(torch.equal(v, vae.decoder.state_dict()[k]) for k, v in decoder.items())
    assert fixed_vae_loss(vae) < 1.1 * before


def test_token_ids_follow_sd1_layout(tokenizer):
    ids = token_ids(tokenizer, ["a red circle on a blue background", ""])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == tokenizer.bos_id and ids[1, 0] == tokenizer.bos_id
    assert (ids[1, 1:] == tokenizer.eos_id).all()
    body = tokenizer.encode("a red circle on a blue background")
    assert ids[0, 1:1 + len(body)].tolist() == body
    assert (ids[0, 1 + len(body):] == tokenizer.eos_id).all()


def test_unet_and_text_encoder_loop_reduces_loss(tiny_vae, tokenizer):
    data = build_latent_set(vae=tiny_vae, tokenizer=tokenizer, groups=4, repeats=2, seed=0,
                            resolution=16)
    assert data.means.shape == (8, 4, 8, 8) and data.token_ids.shape == (4, 77)
    scale = measure_scale_factor(data.means, data.stds)
    torch.manual_seed(0)
    unet = UNetModel(config=TINY_SD15.unet)
    text_encoder = TextEncoder(config=TINY_SD15.text_encoders[0].config)
    empty = token_ids(tokenizer, [""])[0]
    alphas = scaled_linear_alphas_cumprod(TINY_SD15.schedule)

    def fixed_loss() -> float:
        generator = torch.Generator().manual_seed(5)
        latents, ids = draw_batch(data, groups=4, scale_factor=scale, empty_ids=empty,
                                  caption_dropout=0.0, generator=generator)
        with torch.no_grad():
            return float(diffusion_loss(unet, text_encoder, latents, ids, alphas_cumprod=alphas,
                                        generator=generator, min_snr_gamma=5.0))

    before = fixed_loss()
    training = UNetTrainingConfig(steps=20, groups_per_batch=4, repeats=2, learning_rate=2e-3,
                                  ema_decay=0.5)
    losses = train_unet(unet=unet, text_encoder=text_encoder, data=data, scale_factor=scale,
                        schedule=TINY_SD15.schedule, training=training, empty_ids=empty,
                        progress=False)
    assert len(losses) == 20
    assert fixed_loss() < 0.8 * before


def test_trainer_touches_only_its_parameter_subset():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    frozen = model[0].weight.detach().clone()
    model[0].requires_grad_(False)
    trainer = Trainer(parameters=model[1].parameters(), learning_rate=0.1, total_steps=5,
                      warmup_steps=1)
    x = torch.randn(16, 4)
    first = trainer.step(model(x).pow(2).mean())
    for _ in range(4):
        last = trainer.step(model(x).pow(2).mean())
    assert torch.equal(model[0].weight, frozen) and last < first
    with pytest.raises(ValueError):
        Trainer(parameters=model[0].parameters(), learning_rate=0.1, total_steps=5)


def test_ema_averages_and_copies_back():
    layer = torch.nn.Linear(2, 2)
    ema = EMA(modules=[layer], decay=0.9)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update()
    ema.copy_to_modules()
    assert torch.all(layer.weight > start) and torch.all(layer.weight < start + 1.0)


def test_checkpoint_round_trips_through_the_normal_loader(tmp_path, tiny_vae):
    family = with_scale_factor(replace(DEMO_FAMILY, unet=TINY_SD15.unet, vae=SMOKE_VAE,
                                       text_encoders=TINY_SD15.text_encoders), 0.5)
    torch.manual_seed(0)
    unet = UNetModel(config=family.unet)
    text_encoder = TextEncoder(config=family.text_encoders[0].config)
    path = save_checkpoint(tmp_path / "tiny.safetensors", family=family, unet=unet, vae=tiny_vae,
                           text_encoder=text_encoder)
    header, detected = inspect_checkpoint(path)
    assert detected == family
    expected = demo_metadata(family)
    for key in ("modelspec.architecture", "modelspec.title", "modelspec.resolution"):
        assert header.metadata[key] == expected[key]
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in header.tensors)
    model = StableDiffusionModel(family=detected)
    report = model.load_ldm_state_dict(load_state_dict(path, dtype=torch.float32))
    assert report.missing == [] and report.unexpected == []
    assert torch.allclose(model.unet.out[2].weight, unet.out[2].weight.half().float())


@pytest.mark.slow
def test_the_demo_command_runs_every_stage_at_a_tiny_scale(tmp_path):
    """`python -m modules.training.demo` end to end at 0.2 % of its steps: the checkpoint
    loads through the normal loader, and the ControlNet, embedding and LoRA are written."""
    from modules.models.controlnet_files import load_controlnet
    from modules.networks.embeddings import read_embedding
    from modules.training.demo import main

    out = tmp_path / "models" / "Stable-diffusion" / "demo.safetensors"
    main(["--out", str(out), "--scale", "0.002", "--threads", "1"])
    _, family = inspect_checkpoint(out)
    StableDiffusionModel(family=family).load_ldm_state_dict(load_state_dict(out))
    load_controlnet(str(tmp_path / "models" / "ControlNet" / "easel-demo-silhouette.safetensors"),
                    base=family.unet)
    assert read_embedding(tmp_path / "models" / "embeddings" / "easel-bar.safetensors")
    assert (tmp_path / "models" / "Lora" / "easel-bar.safetensors").stat().st_size > 0


@pytest.mark.slow
def test_every_extra_of_the_demo_recipe_trains_and_loads(tmp_path, one_thread):  # noqa: F811
    """Stage 6 at 0.2 % of its steps on the shipped checkpoint: every file that ships
    beside it (ControlNet, embedding, LoRA, T2I-Adapter, IP-Adapter and its encoder) is
    written where the app reads it, and the adapters load as what they are."""
    from pathlib import Path

    from modules.models.ip_adapter_files import load_clip_vision, load_ip_adapter
    from modules.models.t2i_adapter_files import load_t2i_adapter
    from modules.training.demo import DemoRecipe, train_extras

    checkpoint = Path("models/Stable-diffusion/easel-demo.safetensors")
    models = tmp_path / "models"
    written = train_extras(DemoRecipe().scaled(0.002), checkpoint=checkpoint, models=models,
                           progress=False)
    names = {path.relative_to(models).as_posix() for path in written}
    assert names == {"ControlNet/easel-demo-silhouette.safetensors",
                     "embeddings/easel-bar.safetensors", "Lora/easel-bar.safetensors",
                     "ControlNet/easel-demo-t2i-silhouette.safetensors",
                     "clip_vision/easel-demo-clip-vision.safetensors",
                     "ControlNet/easel-demo-ip-adapter.safetensors"}
    unet = inspect_checkpoint(checkpoint)[1].unet
    load_t2i_adapter(models / "ControlNet/easel-demo-t2i-silhouette.safetensors", base=unet)
    load_ip_adapter(models / "ControlNet/easel-demo-ip-adapter.safetensors", base=unet)
    load_clip_vision(models / "clip_vision/easel-demo-clip-vision.safetensors")
