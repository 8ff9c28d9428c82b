"""Seeds and noise match A1111's recipes bit for bit (CPU source) and to 1e-5 (NV)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from modules.sampling.rng_philox import PhiloxGenerator
from modules.sampling.seeds import ImageRNG, batch_seeds, create_random_tensors, fix_seed, slerp

SHAPE = (4, 64 // 8, 48 // 8)

# rng_philox.Generator(seed=0).randn(shape=(3, 4)) as documented upstream (CUDA values).
NV_SEED0_3x4 = np.array([
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
])


def cpu_draws(seed: int, shape: tuple[int, ...], count: int) -> list[torch.Tensor]:
    generator = torch.Generator("cpu").manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


def test_philox_documented_vector() -> None:
    values = PhiloxGenerator(0).randn((3, 4))
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, NV_SEED0_3x4, atol=1e-5, rtol=0)


def test_philox_offset_advances_once_per_call() -> None:
    generator = PhiloxGenerator(0)
    first, second = generator.randn((3, 4)), generator.randn((3, 4))
    assert generator.offset == 2
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(PhiloxGenerator(0, offset=1).randn((3, 4)), second)
    # The counter is (offset, 0, index, 0), so a longer request extends a shorter one.
    np.testing.assert_array_equal(PhiloxGenerator(0).randn((12,)), first.reshape(-1))
    assert not np.allclose(PhiloxGenerator(1).randn((3, 4)), first)
    # The high half of a 64-bit seed is part of the key.
    assert not np.allclose(PhiloxGenerator(2**32).randn((3, 4)), first)


@pytest.mark.parametrize("source", ["CPU", "GPU"])
def test_first_is_stack_of_per_seed_cpu_draws(source: str) -> None:
    seeds = [1234567890, 42, 3000000000]
    noise = ImageRNG(shape=SHAPE, seeds=seeds, source=source).first()
    expected = torch.stack([
        torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds
    ])
    assert noise.dtype == torch.float32 and noise.shape == (3, *SHAPE)
    assert torch.equal(noise, expected)


def test_next_continues_each_generator() -> None:
    seeds = [7, 8]
    rng = ImageRNG(shape=SHAPE, seeds=seeds, source="CPU")
    rng.first()
    second, third = rng.next(), rng.next()
    for i, seed in enumerate(seeds):
        draws = cpu_draws(seed, SHAPE, 3)
        assert torch.equal(second[i], draws[1])
        assert torch.equal(third[i], draws[2])


def test_next_before_first_is_the_first_draw() -> None:
    rng = ImageRNG(shape=SHAPE, seeds=[5], source="CPU")
    assert torch.equal(rng.next()[0], cpu_draws(5, SHAPE, 1)[0])
    assert torch.equal(rng.next()[0], cpu_draws(5, SHAPE, 2)[1])


def test_ensd_reseeds_after_first_draw() -> None:
    rng = ImageRNG(shape=SHAPE, seeds=[10, 11], source="CPU", eta_noise_seed_delta=31337)
    first = rng.first()
    assert torch.equal(first[0], cpu_draws(10, SHAPE, 1)[0])  # ENSD leaves the latent alone
    noise = rng.next()
    assert torch.equal(noise[0], cpu_draws(10 + 31337, SHAPE, 1)[0])
    assert torch.equal(noise[1], cpu_draws(11 + 31337, SHAPE, 1)[0])


def test_manual_reseed_for_ensd() -> None:
    rng = ImageRNG(shape=SHAPE, seeds=[3], source="CPU")
    rng.first()
    rng.reseed_for_ensd(100)
    assert torch.equal(rng.next()[0], cpu_draws(103, SHAPE, 1)[0])


def test_batch_equals_singles_with_variation_and_ensd() -> None:
    seeds, subseeds = batch_seeds(99, 500, 0.4, 4)
    common = dict(shape=SHAPE, subseed_strength=0.4, source="CPU", eta_noise_seed_delta=5)
    batch = ImageRNG(seeds=seeds, subseeds=subseeds, **common)
    singles = [ImageRNG(seeds=[s], subseeds=[u], **common) for s, u in zip(seeds, subseeds)]
    assert torch.equal(batch.first(), torch.cat([r.first() for r in singles]))
    assert torch.equal(batch.next(), torch.cat([r.next() for r in singles]))
    assert torch.equal(batch.next(), torch.cat([r.next() for r in singles]))


def test_variation_strength_endpoints() -> None:
    main = cpu_draws(1, SHAPE, 1)[0]
    sub = cpu_draws(2, SHAPE, 1)[0]
    rng_half = ImageRNG(shape=SHAPE, seeds=[1], subseeds=[2], subseed_strength=0.5, source="CPU")
    assert torch.allclose(rng_half.first()[0], slerp(0.5, main, sub))
    assert torch.allclose(slerp(0.0, main, sub), main, atol=1e-5)
    assert torch.allclose(slerp(1.0, main, sub), sub, atol=1e-5)
    full = ImageRNG(shape=SHAPE, seeds=[1], subseeds=[2], subseed_strength=1.0, source="CPU")
    assert torch.allclose(full.first()[0], sub, atol=1e-5)


def test_variation_subnoise_does_not_consume_the_image_stream() -> None:
    rng = ImageRNG(shape=SHAPE, seeds=[1], subseeds=[2], subseed_strength=0.5, source="CPU")
    rng.first()
    assert torch.equal(rng.next()[0], cpu_draws(1, SHAPE, 2)[1])


def test_short_subseed_list_uses_subseed_zero() -> None:
    rng = ImageRNG(shape=SHAPE, seeds=[1, 2], subseeds=[9], subseed_strength=0.3, source="CPU")
    noise = rng.first()
    main = cpu_draws(2, SHAPE, 1)[0]
    assert torch.allclose(noise[1], slerp(0.3, main, cpu_draws(0, SHAPE, 1)[0]))


def test_slerp_hand_values_and_height_axis_normalisation() -> None:
    # One channel, H=2, W=2. Column 0: low (1,0) vs high (0,1), omega = pi/2.
    # Column 1: low (0,1) vs high (1,1)/|.|, omega = pi/4. Norms run along H (dim 1).
    low = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    high = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    result = slerp(0.5, low, high)
    w0 = math.sin(math.pi / 4)
    w1 = math.sin(math.pi / 8) / math.sin(math.pi / 4)
    expected = torch.tensor([[[w0, w1 * 1.0], [w0, w1 * 2.0]]])
    assert torch.allclose(result, expected, atol=1e-6)


def test_slerp_linear_branch_has_swapped_weights() -> None:
    # Parallel columns: dot == 1 > 0.9995, so upstream returns low*val + high*(1-val).
    low = torch.tensor([[[1.0], [0.0]]])
    high = torch.tensor([[[2.0], [0.0]]])
    result = slerp(0.25, low, high)
    assert torch.allclose(result, torch.tensor([[[0.25 * 1.0 + 0.75 * 2.0], [0.0]]]))


def test_resize_from_smaller_pastes_centred_small_noise() -> None:
    target = (4, 8, 8)
    rng = ImageRNG(shape=target, seeds=[77], seed_resize_from_h=32, seed_resize_from_w=32,
                   source="CPU")
    noise = rng.first()[0]
    canvas = cpu_draws(77, target, 1)[0]
    small = cpu_draws(77, (4, 4, 4), 1)[0]
    expected = canvas.clone()
    expected[:, 2:6, 2:6] = small
    assert torch.equal(noise, expected)
    assert torch.equal(noise[:, :2], canvas[:, :2])  # the border is the ordinary draw


def test_resize_from_larger_crops_centre_and_mixed_axes() -> None:
    target = (4, 8, 8)
    crop = ImageRNG(shape=target, seeds=[5], seed_resize_from_h=128, seed_resize_from_w=128,
                    source="CPU").first()[0]
    assert torch.equal(crop, cpu_draws(5, (4, 16, 16), 1)[0][:, 4:12, 4:12])
    # Height grows (paste at row 2), width shrinks (crop 2 columns from each side).
    mixed = ImageRNG(shape=target, seeds=[5], seed_resize_from_h=32, seed_resize_from_w=96,
                     source="CPU").first()[0]
    expected = cpu_draws(5, target, 1)[0].clone()
    expected[:, 2:6, :] = cpu_draws(5, (4, 4, 12), 1)[0][:, :, 2:10]
    assert torch.equal(mixed, expected)


def test_resize_from_with_variation_mixes_small_noises() -> None:
    target = (4, 8, 8)
    noise = ImageRNG(shape=target, seeds=[5], subseeds=[6], subseed_strength=0.7,
                     seed_resize_from_h=32, seed_resize_from_w=32, source="CPU").first()[0]
    small = slerp(0.7, cpu_draws(5, (4, 4, 4), 1)[0], cpu_draws(6, (4, 4, 4), 1)[0])
    assert torch.allclose(noise[:, 2:6, 2:6], small)


def test_global_generator_is_untouched() -> None:
    state = torch.random.get_rng_state()
    ImageRNG(shape=SHAPE, seeds=[1], subseeds=[2], subseed_strength=0.5,
             seed_resize_from_h=32, seed_resize_from_w=32, source="CPU").first()
    assert torch.equal(torch.random.get_rng_state(), state)


def test_nv_source_uses_philox_streams() -> None:
    rng = ImageRNG(shape=(1, 3, 4), seeds=[0], source="NV")
    first = rng.first()
    np.testing.assert_allclose(first[0, 0].numpy(), NV_SEED0_3x4, atol=1e-5, rtol=0)
    generator = PhiloxGenerator(0)
    generator.randn((1, 3, 4))
    np.testing.assert_array_equal(rng.next()[0].numpy(), generator.randn((1, 3, 4)))


def test_noise_sampler_draws_next() -> None:
    rng = ImageRNG(shape=SHAPE, seeds=[4], source="CPU")
    rng.first()
    sampler = rng.noise_sampler()
    assert torch.equal(sampler(1.0, 0.5)[0], cpu_draws(4, SHAPE, 2)[1])
    half = rng.noise_sampler(like=torch.zeros((1, *SHAPE), dtype=torch.float16))
    third = half(0.5, 0.25)
    assert third.dtype == torch.float16
    assert torch.equal(third[0], cpu_draws(4, SHAPE, 3)[2].half())


def test_create_random_tensors_and_bad_source() -> None:
    noise = create_random_tensors(SHAPE, [8], source="CPU")
    assert torch.equal(noise[0], cpu_draws(8, SHAPE, 1)[0])
    with pytest.raises(ValueError, match="randn_source"):
        ImageRNG(shape=SHAPE, seeds=[1], source="TPU")  # type: ignore[arg-type]


def test_batch_seeds() -> None:
    assert batch_seeds(10, 100, 0.0, 3) == ([10, 11, 12], [100, 101, 102])
    assert batch_seeds(10, 100, 0.5, 3) == ([10, 10, 10], [100, 101, 102])
    assert batch_seeds([4, 9], 1, 0.0, 2) == ([4, 9], [1, 2])


@pytest.mark.parametrize("value", [-1, None, "", "not a number", " -1 "])
def test_fix_seed_random_cases(value: object) -> None:
    expected = random.Random(123).randrange(4294967294)
    assert fix_seed(value, random.Random(123)) == expected


def test_fix_seed_kept_values() -> None:
    assert fix_seed(42) == 42
    assert fix_seed("1234") == 1234
    assert fix_seed(-5) == -5
    drawn = {fix_seed(-1) for _ in range(5)}
    assert all(0 <= s < 4294967294 for s in drawn) and len(drawn) > 1
