"""HyperTile (`modules.nn.hypertile`, the "Hypertile" script).

Proof: regrouping into tiles and back is exact; tiled attention equals attention computed
directly on each tile's tokens (sliced from the map); one tile is the untiled call bit for
bit; the tile counts follow A1111's rule (min side max(128, tile) // 8 * 2^depth, first
`swap_size` divisors) and depths deeper than max depth run unchanged; the seeded choice
is reproducible; a ToMe-merged map runs unchanged; through the tiny U-Net the patch
changes only the layers it should; off (or a map that fits one tile) is bit-identical
through txt2img, on at a larger size changes the image and writes A1111's keys.
"""

from __future__ import annotations

import random

import pytest
import torch

from modules.nn.hypertile import (
    HyperTileUNet,
    HyperTileVAE,
    TileOptions,
    from_tiles,
    min_tile_side,
    pick_tiles,
    tile_candidates,
    tiled_attention,
    to_tiles,
)
from modules.nn.unet import UNetModel
from modules.nn.unet_patches import AttentionPlace, BlockPlace, UNetPatch, UNetPatches
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.tiny import TINY_SD15


def sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _qkv(h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, h * w, 4, generator=g) for _ in range(3)]


def test_tiles_round_trip_and_order():
    q, _, _ = _qkv()
    tiles = to_tiles(q, 8, 12, 2, 3)
    assert tiles.shape == (2 * 6, 3, 4 * 4, 4)
    assert torch.equal(from_tiles(tiles, 8, 12, 2, 3), q)
    grid = q.reshape(2, 3, 8, 12, 4)
    # Tile (1, 2) of image 1: rows 4..7, columns 8..11, row-major.
    expected = grid[1, :, 4:8, 8:12].reshape(3, 16, 4)
    assert torch.equal(tiles[1 * 6 + 1 * 3 + 2], expected)


def test_tiled_attention_equals_attention_per_tile():
    q, k, v = _qkv()
    out = tiled_attention(q, k, v, 8, 12, 2, 3, sdpa).reshape(2, 3, 8, 12, 4)
    grid = [t.reshape(2, 3, 8, 12, 4) for t in (q, k, v)]
    for i in range(2):
        for j in range(3):
            rows, cols = slice(4 * i, 4 * i + 4), slice(4 * j, 4 * j + 4)
            tq, tk, tv = (t[:, :, rows, cols].reshape(2, 3, 16, 4) for t in grid)
            torch.testing.assert_close(out[:, :, rows, cols].reshape(2, 3, 16, 4),
                                       sdpa(tq, tk, tv))
    assert not torch.allclose(out.reshape(q.shape), sdpa(q, k, v), atol=1e-3)


def test_one_tile_is_the_untiled_call_bit_for_bit():
    q, k, v = _qkv()
    assert torch.equal(tiled_attention(q, k, v, 8, 12, 1, 1, sdpa), sdpa(q, k, v))
    patch = HyperTileUNet(TileOptions(3, 256, 3), random.Random(0))
    place = AttentionPlace(BlockPlace("input", 1, 0, 0), 0, 8, 12)  # 8 < 32: one tile
    assert torch.equal(patch.self_attention(q, k, v, place, sdpa), sdpa(q, k, v))


def test_tile_rule_and_depths():
    assert min_tile_side(256, 0) == 32 and min_tile_side(64, 0) == 16
    assert min_tile_side(256, 2) == 128
    assert tile_candidates(128, 32, 3) == [4, 2, 1]
    assert tile_candidates(128, 32, 1) == [4]
    assert tile_candidates(96, 32, 2) == [3, 2]
    assert tile_candidates(20, 32, 3) == [1]  # smaller than one tile
    assert tile_candidates(128, 32, 0) == [4]  # swap 0 still leaves one choice
    patch = HyperTileUNet(TileOptions(max_depth=1), random.Random(0))
    at = [patch.changes_self_attention(AttentionPlace(BlockPlace("input", 1, d, d), 0, 8, 8))
          for d in (0, 1, 2, 3)]
    assert at == [True, True, False, False]
    assert not patch.changes_self_attention(
        AttentionPlace(BlockPlace("input", 1, 0, None), 0, 8, 8))


def test_seeded_choice_is_reproducible_and_varies():
    first = [pick_tiles(128, 32, 3, rng) for rng in [random.Random(7)] for _ in range(20)]
    again = [pick_tiles(128, 32, 3, rng) for rng in [random.Random(7)] for _ in range(20)]
    assert first == again and set(first) == {1, 2, 4}
    rng = random.Random(1)
    state = rng.getstate()
    assert pick_tiles(128, 32, 1, rng) == 4 and rng.getstate() == state  # no choice: no draw


def test_merged_map_runs_unchanged():
    q, k, v = _qkv(8, 8)
    patch = HyperTileUNet(TileOptions(3, 0, 1), random.Random(0))
    place = AttentionPlace(BlockPlace("input", 1, 0, 0), 0, 64, 64)  # 4096 != 64 tokens
    assert torch.equal(patch.self_attention(q, k, v, place, sdpa), sdpa(q, k, v))


def test_vae_tiles_a_map_layer():
    x = torch.randn(1, 2, 32, 32)
    seen = []

    def layer(t):
        seen.append(tuple(t.shape))
        return t * 2 + t.mean(dim=(2, 3), keepdim=True)  # depends on the tile's content

    out = HyperTileVAE(TileOptions(3, 128, 1), random.Random(0)).around(layer, x)
    assert seen == [(4, 2, 16, 16)]
    tile = x[:, :, 16:, :16]
    torch.testing.assert_close(out[:, :, 16:, :16], layer(tile))


class Spy(UNetPatch):
    """Records the token maps that reach the kernel after HyperTile."""

    def __init__(self):
        self.seen = []

    def changes_self_attention(self, place):
        return True

    def self_attention(self, q, k, v, place, attend):
        self.seen.append((place.depth, q.shape[0], q.shape[2]))
        return attend(q, k, v)


def test_through_the_unet_only_allowed_depths_are_tiled():
    torch.manual_seed(0)
    model = UNetModel(config=TINY_SD15.unet).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 32, 32, generator=g)
    context = torch.randn(1, 7, 32, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = model(x, t, context)
        spy = Spy()
        tiled = HyperTileUNet(TileOptions(max_depth=1, max_tile=128, swap_size=1),
                              random.Random(0))
        out = model(x, t, context, patches=UNetPatches((tiled, spy)))
        assert not torch.allclose(out, plain, atol=1e-4)
        # Depth 0 (32 x 32): 2 x 2 tiles of 256 tokens; the middle (depth 1, 16 x 16) fits one.
        assert {s for s in spy.seen if s[0] == 0} == {(0, 4, 256)}
        assert {s for s in spy.seen if s[0] == 1} == {(1, 1, 256)}
        none = HyperTileUNet(TileOptions(max_depth=1, max_tile=256, swap_size=1),
                             random.Random(0))  # min side 32: one tile everywhere
        assert torch.equal(model(x, t, context, patches=UNetPatches((none,))), plain)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    # Eager: a call with HyperTile's patch runs eagerly, and "bit-identical" compares it
    # with plain calls (OpenVINO's plain calls agree with eager to ~1e-6, not bitwise).
    return tiny_runtime(tmp_path_factory.mktemp("data"), {"tiny": TINY_SD15},
                        "--cpu-backend", "eager")


def generate(runtime, size=64, **fields):
    fields = {"prompt": "a red circle", "width": size, "height": size, "steps": 2, "seed": 5,
              "sampler_name": "Euler", "do_not_save_samples": True, **fields}
    result, _ = finish(txt2img(runtime, Txt2ImgParams(**fields)))
    return result


def test_off_or_one_tile_means_bit_identical(runtime):
    plain = generate(runtime)
    off = generate(runtime, alwayson_scripts={"Hypertile": {"args": {"unet": False}}})
    fits = generate(runtime, alwayson_scripts={"hypertile": {"args": {"unet": True}}})
    assert off.images[0].tobytes() == plain.images[0].tobytes() == fits.images[0].tobytes()
    assert "Hypertile" not in off.infotexts[0]
    assert "Hypertile U-Net: True" in fits.infotexts[0]


@pytest.mark.slow
def test_on_at_a_larger_size_changes_the_image(runtime):
    big_plain = generate(runtime, 256)
    by_args = generate(runtime, 256, alwayson_scripts={
        "Hypertile": {"args": {"unet": True, "max_tile_unet": 128, "swap_size_unet": 1}}})
    assert by_args.images[0].tobytes() != big_plain.images[0].tobytes()
    info = by_args.infotexts[0]
    assert "Hypertile U-Net max tile size: 128" in info and "Hypertile U-Net swap size: 1" in info
    assert "Hypertile U-Net max depth" not in info  # default: left out, as A1111 does


def test_pasted_a1111_infotext_sets_the_script_args():
    from modules.infotext import parse_infotext
    from modules.pipeline.infotext_fields import infotext_to_alwayson
    from modules.scripts.builtin.hypertile import Hypertile

    text = ("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, "
            "Hypertile U-Net: True, Hypertile U-Net max tile size: 128, Hypertile VAE: True")
    args = infotext_to_alwayson(parse_infotext(text), [Hypertile()])["Hypertile"]["args"]
    assert args == {"unet": True, "max_tile_unet": 128, "vae": True}


def test_settings_enable_it_where_declared_and_args_win():
    from types import SimpleNamespace

    from modules.scripts.builtin.hypertile import HypertileArgs, unet_choice, vae_choice

    plan = SimpleNamespace(settings=SimpleNamespace(
        hypertile_enable_unet=True, hypertile_max_tile_unet=128, hypertile_enable_vae=True))
    choice = unet_choice(plan, HypertileArgs())
    assert choice.all_passes and choice.options == TileOptions(3, 128, 3)
    assert vae_choice(plan, HypertileArgs()) == TileOptions(3, 128, 3)
    mine = unet_choice(plan, HypertileArgs(unet=True, max_tile_unet=64))
    assert mine.options == TileOptions(3, 64, 3)
    bare = SimpleNamespace(settings=SimpleNamespace())  # Settings without the fields: off
    assert not unet_choice(bare, HypertileArgs()).all_passes
    assert vae_choice(bare, HypertileArgs()) is None


def test_vae_decode_hook_tiles_only_the_middle_attention():
    from modules.nn.autoencoder import AutoencoderKL
    from tests.tiny import TINY_VAE

    torch.manual_seed(0)
    vae = AutoencoderKL(config=TINY_VAE).eval()
    z = torch.randn(1, TINY_VAE.embed_dim, 32, 32)
    seen = []

    def spy(layer, x):
        seen.append(tuple(x.shape))
        return layer(x)

    with torch.no_grad():
        plain = vae.decode(z)
        assert torch.equal(vae.decode(z, mid_attention=spy), plain)  # a pass-through hook
        assert seen == [(1, vae.decoder.mid.attn_1.q.in_channels, 32, 32)]
        one = HyperTileVAE(TileOptions(3, 512, 3), random.Random(0))  # min side 64: one tile
        assert torch.equal(vae.decode(z, mid_attention=one.around), plain)
        tiled = vae.decode(z, mid_attention=HyperTileVAE(TileOptions(3, 128, 1),
                                                         random.Random(0)).around)
    assert not torch.allclose(tiled, plain, atol=1e-4)


@pytest.mark.slow
def test_vae_option_through_txt2img(runtime):
    plain = generate(runtime, 256)
    on = generate(runtime, 256, alwayson_scripts={
        "Hypertile": {"args": {"vae": True, "swap_size_vae": 1}}})
    assert on.images[0].tobytes() != plain.images[0].tobytes()
    assert "Hypertile VAE: True" in on.infotexts[0]
    assert "Hypertile VAE swap size: 1" in on.infotexts[0]
    # 64 px: a 32 x 32 latent (the tiny VAE downscales by 2) within one 512 px tile.
    small = generate(runtime, alwayson_scripts={"Hypertile": {"args": {"vae": True,
                                                                       "max_tile_vae": 512}}})
    assert small.images[0].tobytes() == generate(runtime).images[0].tobytes()


def test_second_pass_option_adds_the_patch_only_to_the_hires_pass():
    from types import SimpleNamespace

    from modules.sampling.cfg import Hooks
    from modules.scripts.builtin.hypertile import Hypertile, HypertileArgs

    def hooks_for(second_pass: bool, args: HypertileArgs) -> int:
        plan = SimpleNamespace(settings=SimpleNamespace(), seeds=[3], second_pass=second_pass,
                               loaded=SimpleNamespace(family=SimpleNamespace(is_flow=False)))
        sampling = SimpleNamespace(cfg_hooks=Hooks())
        Hypertile().process_before_every_sampling(plan, args, sampling)
        return len(sampling.cfg_hooks.before_model)

    only_hires = HypertileArgs(unet_second_pass=True)
    assert (hooks_for(False, only_hires), hooks_for(True, only_hires)) == (0, 1)
    assert (hooks_for(False, HypertileArgs(unet=True)), hooks_for(True, HypertileArgs(unet=True))) \
        == (1, 1)
    assert hooks_for(True, HypertileArgs()) == 0


@pytest.mark.slow
def test_second_pass_option_through_hires_fix(runtime):
    hires = {"enable_hr": True, "hr_scale": 2.0, "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
             "denoising_strength": 0.6}
    plain = generate(runtime, 64, **hires)
    tile = {"swap_size_unet": 1}  # tiles of 32 tokens (256 px / 8)
    second = generate(runtime, 64, alwayson_scripts={
        "Hypertile": {"args": {"unet_second_pass": True, **tile}}}, **hires)
    both = generate(runtime, 64, alwayson_scripts={
        "Hypertile": {"args": {"unet": True, **tile}}}, **hires)
    # The tiny VAE downscales by 2: the first pass's 32 x 32 map fits one tile, the hires
    # pass's 64 x 64 map is split 2 x 2; so only the hires pass can differ.
    assert second.images[0].tobytes() != plain.images[0].tobytes()
    assert second.images[0].tobytes() == both.images[0].tobytes()
    assert "Hypertile U-Net second pass: True" in second.infotexts[0]


def test_isolation_with_the_cfg_step_tools(runtime):
    """Hypertile (U-Net and VAE), CFG Rescale and dynamic thresholding on in one job between
    two plain jobs: the plain images are identical and the loaded model is unchanged."""
    import hashlib

    def model_hash() -> str:
        model = runtime.models.get(None).model
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        return digest.hexdigest()

    before_hash = model_hash()
    before = generate(runtime, cfg_scale=9.0)
    on = generate(runtime, cfg_scale=9.0, alwayson_scripts={
        "Hypertile": {"args": {"unet": True, "max_tile_unet": 0, "swap_size_unet": 2,
                               "vae": True, "max_tile_vae": 0}},
        "CFG Rescale": {"args": {"enabled": True, "phi": 0.5}},
        "DynamicThresholding (CFG-Fix) Integrated": {"args": {"enabled": True,
                                                              "mimic_scale": 4.0}}})
    after = generate(runtime, cfg_scale=9.0)
    assert on.images[0].tobytes() != before.images[0].tobytes()
    assert before.images[0].tobytes() == after.images[0].tobytes()
    assert model_hash() == before_hash
    for key in ("Hypertile U-Net: True", "Hypertile VAE: True", "CFG Rescale: 0.5",
                "dynthres_enabled: True"):
        assert key in on.infotexts[0]
