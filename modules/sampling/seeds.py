"""A1111-compatible seeds and noise: seed resolution, batch seeds and ``ImageRNG``.

A seed shared by an A1111 user must give the same picture here, so the initial latent
noise follows A1111's recipe exactly (docs/a1111-semantics.md, "Seeds"):

* one generator per image, seeded with that image's seed; the initial noise of a batch
  is the stack of each generator's first ``randn`` draw, so a batch of four equals four
  single-image runs;
* a variation seed ("subseed") draws a second noise and mixes the two with A1111's
  ``slerp`` (including its upstream quirks);
* "resize seed from WxH" draws the noise at the old size and pastes it, centred, into a
  fresh draw at the new size;
* later draws (ancestral/SDE samplers, img2img) continue each image's generator, or
  restart it at ``seed + ENSD`` when the eta-noise-seed-delta setting is non-zero.

Upstream draws the subseed noise and the resize-from noise from torch's *global*
generator right after ``torch.manual_seed(seed)``. We never touch the global generator:
a fresh dedicated generator seeded with the same value yields identical numbers
(``manual_seed`` fully resets the state), without leaking state to the rest of the
process.

Random sources (setting ``randn_source``): "GPU" draws on the compute device with that
device's generator (on a non-CUDA device, e.g. CPU or MPS, this is the CPU generator,
as upstream does for MPS and as coincides on CPU); "CPU" always draws on the CPU;
"NV" uses the numpy Philox emulation of CUDA's generator (``modules.sampling.rng_philox``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from modules.sampling.rng_philox import PhiloxGenerator

RandnSource = Literal["CPU", "GPU", "NV"]
RANDN_SOURCES: tuple[str, ...] = ("GPU", "CPU", "NV")

# A1111 picks random seeds with random.randrange(4294967294): [0, 2**32 - 2).
RANDOM_SEED_LIMIT = 4294967294

# slerp falls back to a linear mix when the two noises are this close to parallel.
SLERP_PARALLEL_THRESHOLD = 0.9995

NoiseGenerator = torch.Generator | PhiloxGenerator


def fix_seed(seed: Any, rng: random.Random | None = None) -> int:
    """Resolve a user seed: None, '' and -1 become a random seed; strings are parsed.

    A string that is not an integer counts as -1 (random), as A1111's
    ``get_fixed_seed`` does. Other values are returned as ints unchanged (other
    negative numbers are kept, also as upstream).
    """
    if seed is None or seed == "":
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed.strip())
        except ValueError:
            seed = -1
    seed = int(seed)
    if seed == -1:
        return (rng or random.Random()).randrange(RANDOM_SEED_LIMIT)
    return seed


def batch_seeds(seed: int | Sequence[int], subseed: int | Sequence[int],
                subseed_strength: float, n: int) -> tuple[list[int], list[int]]:
    """Per-image (seeds, subseeds) for ``n`` images (n_iter * batch_size).

    Seeds advance by one per image only when there is no variation; with a variation
    strength every image shares the main seed and the subseed advances instead.
    A list passed as ``seed`` or ``subseed`` is used verbatim.
    """
    if isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = [int(s) for s in seed]
    else:
        step = 1 if subseed_strength == 0 else 0
        seeds = [int(seed) + i * step for i in range(n)]
    if isinstance(subseed, Sequence) and not isinstance(subseed, str):
        subseeds = [int(s) for s in subseed]
    else:
        subseeds = [int(subseed) + i for i in range(n)]
    return seeds, subseeds


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation between main noise ``low`` and subseed noise ``high``.

    Both are (C, H, W). Kept quirks: the norms are taken along dim 1 (height), and the
    near-parallel fallback mixes ``low * val + high * (1 - val)``, i.e. with the weights
    swapped relative to the spherical branch (val=0 there gives ``high``).
    """
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_unit * high_unit).sum(dim=1)
    if dot.mean() > SLERP_PARALLEL_THRESHOLD:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    low_weight = (torch.sin((1.0 - val) * omega) / sin_omega).unsqueeze(1)
    high_weight = (torch.sin(val * omega) / sin_omega).unsqueeze(1)
    return low_weight * low + high_weight * high


def generator_device(source: str, device: torch.device | str) -> torch.device:
    """Where the generators live: the compute device only for "GPU" on CUDA."""
    device = torch.device(device)
    if source == "GPU" and device.type == "cuda":
        return device
    return torch.device("cpu")


def create_generator(seed: int, *, source: str, device: torch.device | str) -> NoiseGenerator:
    """A fresh generator for ``seed`` on the device the ``source`` calls for."""
    if source not in RANDN_SOURCES:
        raise ValueError(f"randn_source must be one of {RANDN_SOURCES}, got {source!r}")
    if source == "NV":
        return PhiloxGenerator(int(seed))
    return torch.Generator(generator_device(source, device)).manual_seed(int(seed))


def draw(generator: NoiseGenerator, shape: Sequence[int]) -> torch.Tensor:
    """Next float32 standard-normal draw of ``shape`` from ``generator`` (on its device)."""
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, PhiloxGenerator):
        return torch.from_numpy(generator.randn(shape))
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def randn_for_seed(seed: int, shape: Sequence[int], *, source: str = "GPU",
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """First draw of a fresh generator seeded with ``seed``, moved to ``device``.

    This stands in for upstream's ``manual_seed(seed); randn(shape)`` on the global
    generator, and for ``randn_local`` (used for Brownian-tree noise).
    """
    return draw(create_generator(seed, source=source, device=device), shape).to(device)


def paste_centered(target: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """Copy ``small`` (C, h, w) into the centre of ``target`` (C, H, W), cropping if larger.

    Along each axis the offset is ``(H - h) // 2``: positive pads (paste inside the
    target), negative crops the source centrally. ``target`` is modified and returned.
    """
    placements = []
    for target_size, small_size in zip(target.shape[1:], small.shape[1:]):
        offset = (target_size - small_size) // 2
        if offset >= 0:
            placements.append((offset, 0, small_size))
        else:
            placements.append((0, -offset, small_size + 2 * offset))
    (ty, sy, h), (tx, sx, w) = placements
    target[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return target


class ImageRNG:
    """Per-image noise streams for one batch, with A1111's first-draw semantics.

    ``first()`` returns the initial latent noise (B, C, h, w); ``next()`` returns each
    image's following draw. As upstream, calling ``next()`` before ``first()`` returns
    the first draw (img2img uses it that way).
    """

    def __init__(self, *, shape: Sequence[int], seeds: Sequence[int],
                 subseeds: Sequence[int] | None = None, subseed_strength: float = 0.0,
                 seed_resize_from_h: int = 0, seed_resize_from_w: int = 0,
                 source: RandnSource = "GPU", device: torch.device | str = "cpu",
                 eta_noise_seed_delta: int = 0) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"shape must be (C, H/8, W/8), got {self.shape}")
        self.seeds = [int(s) for s in seeds]
        self.subseeds = [int(s) for s in subseeds] if subseeds is not None else None
        self.subseed_strength = float(subseed_strength)
        self.seed_resize_from_h = int(seed_resize_from_h)
        self.seed_resize_from_w = int(seed_resize_from_w)
        self.source = source
        self.device = torch.device(device)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta)
        self.generators = [self._generator(s) for s in self.seeds]
        self.is_first = True

    def _generator(self, seed: int) -> NoiseGenerator:
        return create_generator(seed, source=self.source, device=self.device)

    def _fresh_draw(self, seed: int, shape: Sequence[int]) -> torch.Tensor:
        """Upstream's draw from the just-reseeded global generator (see module docstring)."""
        return draw(self._generator(seed), shape)

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """Shape of the seed noise: the target shape, or the resize-from shape."""
        if self.seed_resize_from_h <= 0 or self.seed_resize_from_w <= 0:
            return self.shape
        return (self.shape[0], self.seed_resize_from_h // 8, self.seed_resize_from_w // 8)

    def _subseed(self, index: int) -> int:
        # Upstream uses subseed 0 when the subseed list is shorter than the seed list.
        return self.subseeds[index] if index < len(self.subseeds) else 0

    def _first_for_image(self, index: int, seed: int, generator: NoiseGenerator) -> torch.Tensor:
        noise_shape = self.noise_shape
        resized = noise_shape != self.shape
        subnoise = None
        if self.subseeds is not None and self.subseed_strength != 0:
            subnoise = self._fresh_draw(self._subseed(index), noise_shape)
        # With resize-from, the seed noise comes from the "global" stream and the
        # per-image generator's first draw is the canvas it is pasted into.
        noise = self._fresh_draw(seed, noise_shape) if resized else draw(generator, noise_shape)
        if subnoise is not None:
            noise = slerp(self.subseed_strength, noise, subnoise.to(noise.device))
        if resized:
            noise = paste_centered(draw(generator, self.shape), noise.to(_device_of(generator)))
        return noise

    def first(self) -> torch.Tensor:
        """The initial latent noise (B, C, h, w), float32, on ``device``."""
        per_image = [self._first_for_image(i, seed, generator)
                     for i, (seed, generator) in enumerate(zip(self.seeds, self.generators))]
        self.is_first = False
        if self.eta_noise_seed_delta:
            self.reseed_for_ensd(self.eta_noise_seed_delta)
        return torch.stack(per_image).to(self.device)

    def reseed_for_ensd(self, delta: int) -> None:
        """Restart every image's stream at ``seed_i + delta`` (A1111's ENSD setting)."""
        self.generators = [self._generator(seed + int(delta)) for seed in self.seeds]

    def next(self) -> torch.Tensor:
        """The next draw of every image's generator, stacked (B, C, h, w)."""
        if self.is_first:
            return self.first()
        return torch.stack([draw(g, self.shape) for g in self.generators]).to(self.device)

    def noise_sampler(self, like: torch.Tensor | None = None) -> Callable[[Any, Any], torch.Tensor]:
        """A k-diffusion ``noise_sampler(sigma, sigma_next)`` that draws via ``next()``.

        With ``like`` (the latent being sampled), draws are cast to its device and dtype.
        """
        def sample_noise(sigma: Any, sigma_next: Any) -> torch.Tensor:
            noise = self.next()
            return noise if like is None else noise.to(device=like.device, dtype=like.dtype)
        return sample_noise


def _device_of(generator: NoiseGenerator) -> torch.device:
    if isinstance(generator, PhiloxGenerator):
        return torch.device("cpu")
    return generator.device


def create_random_tensors(shape: Sequence[int], seeds: Sequence[int], *,
                          subseeds: Sequence[int] | None = None, subseed_strength: float = 0.0,
                          seed_resize_from_h: int = 0, seed_resize_from_w: int = 0,
                          source: RandnSource = "GPU",
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """One-shot initial noise for ``seeds`` (e.g. img2img's "latent noise" fill)."""
    rng = ImageRNG(shape=shape, seeds=seeds, subseeds=subseeds,
                   subseed_strength=subseed_strength, seed_resize_from_h=seed_resize_from_h,
                   seed_resize_from_w=seed_resize_from_w, source=source, device=device)
    return rng.next()
