"""Pixels <-> diffusion latents through the VAE, tiled when asked or when memory is short.

`decode_latents` and `encode_images` are the only places the pipeline calls the VAE.
They apply the family's latent scaling (`scale * (z - shift)`), convert between PIL
images and [-1, 1] tensors, and choose between the plain VAE and the tiled one
(`modules/nn/vae_tiled.py`): the tiled path runs when the `tiled_vae` setting says so,
or when `tiled_vae_auto` is on and the estimated memory of a plain pass exceeds what
the device has free (CUDA: `torch.cuda.mem_get_info`; CPU: psutil's available RAM).

The estimates are ComfyUI's published per-pixel figures for the SD VAE (docs/perf-reference.md,
"VAE decode memory"): decode 2178 * h * w * 64 bytes per dtype byte for an h x w latent, encode
1767 * H * W for an H x W image. They are conservative on CPU (measured 1.0 GB vs 2.3 GB estimated
at 512² fp32), which only means tiling starts a little early.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from modules.devices import execution_device
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.tiling import wraps
from modules.nn.vae_tiled import tiled_decode, tiled_encode

log = logging.getLogger(__name__)

DECODE_BYTES_PER_LATENT_PIXEL = 2178 * 64
ENCODE_BYTES_PER_PIXEL = 1767
MEMORY_HEADROOM = 0.8  # use at most this share of the free memory untiled


def decode_memory_estimate(latent_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    batch, _, height, width = latent_shape
    return batch * DECODE_BYTES_PER_LATENT_PIXEL * height * width * _itemsize(dtype)


def encode_memory_estimate(image_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    batch, _, height, width = image_shape
    return batch * ENCODE_BYTES_PER_PIXEL * height * width * _itemsize(dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def available_memory(device: torch.device) -> int:
    """Free bytes for tensors on `device`."""
    from modules.devices import memory_stats  # CUDA/ROCm, XPU, MPS and CPU each by their API

    return int(memory_stats(device)["free"])


def use_tiles(settings, estimate: int, device: torch.device) -> bool:
    if getattr(settings, "tiled_vae", False):
        return True
    if not getattr(settings, "tiled_vae_auto", True):
        return False
    return estimate > MEMORY_HEADROOM * available_memory(device)


def decode(vae: AutoencoderKL, z: torch.Tensor, settings=None, cancel=None,
           mid_attention=None) -> torch.Tensor:
    """Unscaled latent -> image tensor in about [-1, 1], float32.

    A half-precision VAE can overflow to NaN (the SD1.x VAE in fp16 at some sizes); as in
    A1111 (`auto_vae_precision`), such a decode is redone once with a float32 copy of the
    VAE. The copy is made for that call only: the shared model is never changed.
    `cancel` (a job's `Cancellation`) is checked between blocks and tiles. `mid_attention`
    wraps the decoder's middle attention for this job (`AutoencoderKL.decode`; HyperTile's
    VAE option); a tiled decode, already split into tiles, runs without it.
    """
    image = _decode_once(vae, z, settings, cancel, mid_attention)
    if vae.dtype != torch.float32 and getattr(settings, "auto_vae_precision", True) \
            and not torch.isfinite(image).all():
        log.warning("A tensor with NaNs was produced by the %s VAE; decoding again in "
                    "float32", str(vae.dtype).removeprefix("torch."))
        image = _decode_once(float32_copy(vae), z, settings, cancel, mid_attention)
    return image


def float32_copy(vae: AutoencoderKL) -> AutoencoderKL:
    """A float32 twin of `vae` on its device (weights copied; placement hooks not carried)."""
    device = execution_device(vae)
    with torch.device("meta"):  # no random init: every tensor is assigned below
        twin = AutoencoderKL(config=vae.config)
    twin.load_state_dict({k: v.to(device, torch.float32) for k, v in vae.state_dict().items()},
                         assign=True)
    twin.set_attention_backend(vae.decoder.mid.attn_1.attention_backend)
    twin.set_channels_last(vae.memory_format == torch.channels_last)
    return twin.eval().requires_grad_(False)


def _decode_once(vae: AutoencoderKL, z: torch.Tensor, settings, cancel=None,
                 mid_attention=None) -> torch.Tensor:
    with torch.inference_mode():
        if settings is not None and use_tiles(settings, decode_memory_estimate(
                tuple(z.shape), vae.dtype), z.device):
            return tiled_decode(vae, z.to(vae.dtype), tile=settings.tiled_vae_decoder_tile,
                                overlap=settings.tiled_vae_decoder_overlap,
                                refine=settings.tiled_vae_refine, cancel=cancel,
                                wrap=wraps(vae)).float()
        return vae.decode(z.to(vae.dtype), cancel, mid_attention).float()


def encode(vae: AutoencoderKL, x: torch.Tensor, settings=None, cancel=None):
    """Image tensor in [-1, 1] -> the posterior (`DiagonalGaussian`) over unscaled latents.

    `cancel` (a job's `Cancellation`) is checked between blocks and tiles.
    """
    factor = vae.config.downscale
    divisible = x.shape[-2] % factor == 0 and x.shape[-1] % factor == 0
    with torch.inference_mode():
        if settings is not None and divisible and use_tiles(settings, encode_memory_estimate(
                tuple(x.shape), vae.dtype), x.device):
            return tiled_encode(vae, x, tile=settings.tiled_vae_encoder_tile,
                                overlap=settings.tiled_vae_encoder_overlap,
                                refine=settings.tiled_vae_refine, cancel=cancel, wrap=wraps(vae))
        return vae.encode(x, cancel)


def decode_latents(loaded, latents: torch.Tensor, settings=None,
                   cancel=None, mid_attention=None) -> list[Image.Image]:
    """Diffusion latents -> 8-bit RGB images, with the family's scale factor."""
    config = loaded.family.vae
    z = latents / config.scale_factor + config.shift_factor
    return tensor_to_images(decode(loaded.vae, z, settings, cancel, mid_attention))


def encode_images(loaded, pixels: torch.Tensor, settings=None, *,
                  noise_seed: int | None = None, cancel=None) -> torch.Tensor:
    """[-1, 1] images (B, 3, H, W) -> diffusion latents.

    With `noise_seed` the posterior is sampled (see `sample_posterior`); without, its
    mean is used.
    """
    vae = loaded.vae
    posterior = encode(vae, pixels.to(execution_device(vae)), settings, cancel)
    seeds = None if noise_seed is None else [noise_seed] * pixels.shape[0]
    return sample_posterior(loaded, posterior, seeds)


def sample_posterior(loaded, posterior, seeds: list[int] | None) -> torch.Tensor:
    """Scaled latents from a VAE posterior: its mean, or one sample per seed.

    Sample i uses noise from a CPU generator seeded with `seeds[i]` (A1111 samples
    from torch's global RNG instead); a posterior of one image serves any number of
    seeds.
    """
    config = loaded.family.vae
    if seeds is None:
        z = posterior.mode()
    else:
        shape = posterior.mean.shape[1:]
        noise = torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(
            int(seed)), dtype=torch.float32) for seed in seeds])
        mean, std = posterior.mean, posterior.std
        if mean.shape[0] == 1 and len(seeds) > 1:
            mean, std = mean.expand(len(seeds), -1, -1, -1), std.expand(len(seeds), -1, -1, -1)
        z = mean + std * noise.to(mean)
    return (z.float() - config.shift_factor) * config.scale_factor


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    pixels = ((pixels.float() + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(image)) for image in array]


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> (B, 3, H, W) float32 in [-1, 1]."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
