"""T2I-Adapter and IP-Adapter units of the built-in ControlNet extension, end to end (issue #20).

Tiny random files, written where a user drops them: a ControlNet, a T2I-Adapter and
IP-Adapters (`.safetensors` and the nested `.bin` pickle) in models/ControlNet/, a tiny
CLIP image encoder in models/clip_vision/. Jobs go through `txt2img` / `img2img` with
`alwayson_scripts.controlnet` units and through the HTTP API; each adapter's effect is
checked against the same patch built by hand on one U-Net call.
"""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from modules.api.app import create_api_app
from modules.models.ip_adapter_files import (
    adapter_state_to_file,
    find_clip_vision,
    load_clip_vision,
    load_ip_adapter,
)
from modules.models.t2i_adapter_files import load_t2i_adapter
from modules.nn.ip_adapter import (
    IPAdapter,
    IPAdapterConfig,
    IPAdapterPatch,
    cross_attention_layers,
    encode_reference,
)
from modules.nn.t2i_adapter import StyleAdapter, T2IAdapter, T2IAdapterConfig, T2IAdapterPatch
from modules.nn.unet_patches import UNetPatches
from modules.pipeline.params import Img2ImgParams, Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.sampling.cfg import CFGDenoiserParams
from tests.helpers.api_runtime import decode_png, make_runtime, png_base64
from tests.helpers.checkpoints import finish
from tests.helpers.controlnet import use_extension_package, write_tiny_controlnet
from tests.helpers.parity import perturb
from tests.tiny import TINY_SD15, TINY_SDXL

AUTH = {"Authorization": "Basic " + base64.b64encode(b"user:pw").decode()}
IMAGE_DIM = 16  # the tiny encoder's image_embeds width


def write_tiny_clip_vision(path, *, projection: int = IMAGE_DIM, seed: int = 0):
    """A random transformers CLIPVisionModelWithProjection as a state-dict file."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=projection,
                              num_hidden_layers=2, num_attention_heads=2, image_size=32,
                              patch_size=8, hidden_act="gelu")
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if k != "vision_model.embeddings.position_ids"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"num_attention_heads": "2", "hidden_act": "gelu"})


def tiny_ip_adapter(unet_config, *, image_dim: int = IMAGE_DIM, seed: int = 0,
                    scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A random plain IP-Adapter for `unet_config`, under the file's tensor names."""
    widths = tuple(width for _, width in cross_attention_layers(unet_config))
    config = IPAdapterConfig(kind="plain", image_dim=image_dim,
                             context_dim=unet_config.context_dim, n_tokens=4,
                             layer_widths=widths)
    torch.manual_seed(seed)
    adapter = IPAdapter(config=config, base=unet_config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return {k: v.contiguous() for k, v in adapter_state_to_file(adapter).items()}


def tiny_t2i_adapter(*, channels=(32, 64), seed: int = 0, scale: float = 0.3,
                     kind: str = "full", downscale: int = 8) -> dict[str, torch.Tensor]:
    """A random full T2I-Adapter (TencentARC names) for the tiny SD1 U-Net by default."""
    torch.manual_seed(seed)
    adapter = T2IAdapter(config=T2IAdapterConfig(kind=kind, channels=channels,
                                                 num_res_blocks=2, downscale=downscale))
    perturb(adapter, seed, scale=scale)
    return {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}


def tiny_style_adapter(*, width: int = 32, context_dim: int = 32, seed: int = 0):
    """A random style adapter reading the tiny encoder's 32-wide hidden states."""
    torch.manual_seed(seed)
    adapter = StyleAdapter(config=T2IAdapterConfig(kind="style", width=width,
                                                   context_dim=context_dim, num_heads=8,
                                                   num_layers=1, num_tokens=8))
    perturb(adapter, seed, scale=0.5)
    return {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}


def write_nested_bin(path, tensors: dict[str, torch.Tensor]) -> None:
    """The original IP-Adapter `.bin` layout: {"image_proj": {...}, "ip_adapter": {...}}."""
    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for name, tensor in tensors.items():
        group, rest = name.split(".", 1)
        nested[group][rest] = tensor
    torch.save(nested, path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data = tmp_path_factory.mktemp("adapters")
    folder = data / "models" / "ControlNet"
    write_tiny_controlnet(folder / "control_tiny.safetensors", TINY_SD15.unet, scale=0.2)
    save_file(tiny_ip_adapter(TINY_SD15.unet), str(folder / "ip-adapter_tiny.safetensors"))
    write_nested_bin(folder / "ip-adapter_tiny_bin.bin", tiny_ip_adapter(TINY_SD15.unet, seed=1))
    save_file(tiny_ip_adapter(TINY_SDXL.unet), str(folder / "ip-adapter_xl.safetensors"))
    save_file(tiny_ip_adapter(TINY_SD15.unet, image_dim=24),
              str(folder / "ip-adapter_wide.safetensors"))  # no encoder of width 24
    (folder / "ip-adapter_broken.bin").write_bytes(b"PK\x03\x04 not really a zip" * 40)
    save_file(tiny_t2i_adapter(), str(folder / "t2iadapter_tiny.safetensors"))
    torch.save(tiny_t2i_adapter(seed=1), folder / "t2iadapter_tiny_pth.pth")
    save_file(tiny_t2i_adapter(channels=(32, 64, 64, 64), kind="full_xl", downscale=16),
              str(folder / "t2iadapter_xl.safetensors"))
    save_file(tiny_style_adapter(), str(folder / "t2iadapter_style_tiny.safetensors"))
    write_tiny_clip_vision(data / "models" / "clip_vision" / "clip_tiny.safetensors")
    return data


@pytest.fixture(scope="module")
def runtime(data):
    rt = make_runtime(data, "--api-auth", "user:pw")
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def picture(color=(255, 255, 255)) -> str:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[16:48, 16:48] = color
    return png_base64(Image.fromarray(pixels))


def run(runtime, *units, steps: int = 3):
    params = Txt2ImgParams(prompt="a square", seed=11, width=64, height=64, steps=steps,
                           sampler_name="Euler", do_not_save_samples=True,
                           alwayson_scripts={"controlnet": {"args": list(units)}} if units else {})
    return finish(txt2img(runtime, params))[0]


def pixels(result) -> bytes:
    return result.images[0].tobytes()


def ip_unit(**fields):
    return {"enabled": True, "module": "ip-adapter_clip_sd15", "model": "ip-adapter_tiny",
            "image": picture((255, 0, 0)), **fields}


def t2i_unit(**fields):
    return {"enabled": True, "module": "none", "model": "t2iadapter_tiny", "image": picture(),
            **fields}


def style_unit(**fields):
    return {"enabled": True, "module": "t2ia_style_clipvision", "model": "t2iadapter_style_tiny",
            "image": picture((0, 255, 0)), **fields}


def cn_unit(**fields):
    return {"enabled": True, "module": "canny", "model": "control_tiny", "image": picture(),
            "processor_res": 64, **fields}


def model_hash(runtime) -> str:
    digest = hashlib.sha256()
    for name, tensor in runtime.models.get().model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def step_params(x, context, *, step: int = 0, total: int = 4) -> CFGDenoiserParams:
    """One CFG step's model input over two rows: image 0's positive and negative prompt."""
    from modules.conditioning.conds import Cond

    return CFGDenoiserParams(x=x, sigma=torch.ones(2), conds=[Cond(c) for c in context],
                             image_cond=None, step=step, total_steps=total, row_images=[0, 0],
                             row_is_uncond=[False, True])


def unit_ready(data, runtime, unit: dict):
    """The extension's prepared unit (what `process_before_every_sampling` builds)."""
    use_extension_package()
    from easel_controlnet.library import ControlNetCache
    from easel_controlnet.prepare import Target, prepare_unit
    from easel_controlnet.units import ControlNetUnit

    loaded = runtime.models.get()
    target = Target(width=64, height=64, model_dir=data / "models" / "ControlNet",
                    annotator_dir=None, base=loaded.family.unet, device=torch.device("cpu"),
                    dtype=torch.float32, clip_vision_dir=data / "models" / "clip_vision")
    return prepare_unit(ControlNetUnit.parse_arg(unit), target, cache=ControlNetCache())[0]


def test_adapter_files_are_listed_with_their_kinds(data):
    use_extension_package()
    from easel_controlnet.library import KindCache, list_models

    kinds = KindCache()
    entries = {e.stem: e.kind for e in list_models(data / "models" / "ControlNet", kinds)}
    assert entries["control_tiny"] == "controlnet"
    assert entries["ip-adapter_tiny"] == "ip_adapter"
    assert entries["ip-adapter_tiny_bin"] == "ip_adapter"  # nested pickle, header only
    assert entries["ip-adapter_broken"] == "controlnet"  # unreadable: its loader explains
    assert entries["t2iadapter_tiny"] == entries["t2iadapter_tiny_pth"] == "t2i_adapter"
    assert entries["t2iadapter_style_tiny"] == "t2i_adapter"


def test_ip_adapter_unit_changes_the_image_and_equals_the_direct_patch(data, runtime):
    plain = run(runtime)
    with_ip = run(runtime, ip_unit())
    assert with_ip.warnings == []
    assert pixels(with_ip) != pixels(plain)
    assert "ControlNet 0: \"Module: ip-adapter_clip_sd15, Model: ip-adapter_tiny" in \
        with_ip.infotexts[0]
    assert pixels(run(runtime, ip_unit(model="ip-adapter_tiny_bin"))) not in (
        pixels(plain), pixels(with_ip))
    # The unit's step hook against the same patch built by hand, on one U-Net call.
    use_extension_package()
    from easel_controlnet.inject import ControlStepHook

    loaded = runtime.models.get()
    unet = loaded.model.unet
    adapter = load_ip_adapter(data / "models" / "ControlNet" / "ip-adapter_tiny.safetensors",
                              base=loaded.family.unet)
    encoder = load_clip_vision(find_clip_vision(data / "models" / "clip_vision", adapter))
    reference = decode_png(picture((255, 0, 0))).convert("RGB")
    cond, uncond = encode_reference(encoder, adapter, reference)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    t = torch.tensor([500.0, 500.0])
    params = step_params(x, context)
    ControlStepHook([], [unit_ready(data, runtime, ip_unit(weight=0.8))])(params)
    direct = UNetPatches((IPAdapterPatch(adapter=adapter, cond_tokens=cond, uncond_tokens=uncond,
                                         weight=0.8, row_images=[0, 0],
                                         row_is_uncond=[False, True]),))
    with torch.no_grad():
        through_unit = unet(x, t, context, patches=params.unet_kwargs["patches"])
        by_hand = unet(x, t, context, patches=direct)
        without = unet(x, t, context)
    assert torch.equal(through_unit, by_hand)
    assert not torch.allclose(through_unit, without)


def test_guidance_window_is_honoured(data, runtime):
    use_extension_package()
    from easel_controlnet.inject import ControlStepHook

    ready = unit_ready(data, runtime, ip_unit(guidance_start=0.5, guidance_end=0.75))
    x, context = torch.zeros(2, 4, 8, 8), torch.zeros(2, 77, 32)
    applied = []
    for step in range(4):  # progress 0, 0.25, 0.5, 0.75
        params = step_params(x, context, step=step, total=4)
        ControlStepHook([], [ready])(params)
        applied.append("patches" in params.unet_kwargs)
    assert applied == [False, False, True, True]
    # A window past the last step (3 steps: progress 0, 1/3, 2/3) leaves the image alone.
    assert pixels(run(runtime, ip_unit(guidance_start=0.9))) == pixels(run(runtime))


def test_ip_adapter_and_controlnet_in_one_job(runtime):
    ip_only = run(runtime, ip_unit())
    cn_only = run(runtime, cn_unit())
    both = run(runtime, cn_unit(), ip_unit())
    assert both.warnings == []
    assert len({pixels(ip_only), pixels(cn_only), pixels(both), pixels(run(runtime))}) == 4


def test_an_ip_adapter_job_leaves_other_jobs_and_the_model_alone(runtime):
    before_hash = model_hash(runtime)
    first = pixels(run(runtime))
    run(runtime, ip_unit())
    second = pixels(run(runtime))
    assert first == second
    assert model_hash(runtime) == before_hash


@pytest.mark.parametrize(("unit", "reason"), [
    (ip_unit(model="ip-adapter_xl"), "the loaded model is SD1"),
    (t2i_unit(model="t2iadapter_xl"), "t2iadapter_xl.safetensors"),
    (style_unit(module="none"), "needs the t2ia_style_clipvision preprocessor"),
    (ip_unit(model="ip-adapter_broken"), "ip-adapter_broken.bin"),
    (ip_unit(model="ip-adapter_wide"), "models/clip_vision"),
    (ip_unit(module="canny"), "needs a CLIP preprocessor"),
    (cn_unit(module="ip-adapter_clip_sd15"), "makes a CLIP image embedding"),
])
def test_unusable_adapter_units_are_one_warning_and_jobs_go_on(runtime, unit, reason):
    plain = pixels(run(runtime))
    result = run(runtime, unit)
    assert len(result.warnings) == 1, result.warnings
    assert result.warnings[0].startswith("ControlNet unit 0:") and reason in result.warnings[0]
    assert "ControlNet 0" not in result.infotexts[0]
    assert pixels(result) == plain
    assert pixels(run(runtime)) == plain  # the next job is unaffected


def test_ip_adapter_unit_in_img2img(runtime):
    from modules.pipeline.img2img import img2img

    def job(*units):
        init = decode_png(picture((0, 0, 255))).convert("RGB")
        params = Img2ImgParams(prompt="a square", seed=3, width=64, height=64, steps=3,
                               sampler_name="Euler", denoising_strength=0.8,
                               init_images=[init], do_not_save_samples=True,
                               alwayson_scripts={"controlnet": {"args": list(units)}})
        return finish(img2img(runtime, params))[0]

    plain = job()
    with_ip = job(ip_unit())
    assert with_ip.warnings == [] and pixels(with_ip) != pixels(plain)
    # No picture of its own: the init picture is the reference, as the extension does.
    fallback = job(ip_unit(image=None))
    assert fallback.warnings == [] and pixels(fallback) not in (pixels(plain), pixels(with_ip))


def test_api_units_with_an_ip_adapter(client):
    def post(*units):
        body = {"prompt": "a square", "seed": 11, "width": 64, "height": 64, "steps": 3,
                "sampler_name": "Euler"}
        if units:
            body["alwayson_scripts"] = {"controlnet": {"args": list(units)}}
        response = client.post("/sdapi/v1/txt2img", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()["images"][0]

    plain = post()
    assert post(ip_unit(), cn_unit()) != plain
    assert post(ip_unit(weight=0.0)) == plain
    assert post(ip_unit(module="ip-adapter_clip_h")) == post(ip_unit())  # the label works
    models = client.get("/controlnet/model_list", headers=AUTH).json()["model_list"]
    assert any(m.startswith("ip-adapter_tiny [") for m in models)
    detect = client.post("/controlnet/detect", headers=AUTH, json={
        "controlnet_module": "ip-adapter_clip_sd15", "controlnet_input_images": [picture()]})
    assert detect.status_code == 422 and "CLIP image embedding" in detect.text


def test_t2i_adapter_unit_changes_the_image_and_equals_the_direct_patch(data, runtime):
    plain = run(runtime)
    with_t2i = run(runtime, t2i_unit())
    assert with_t2i.warnings == [] and pixels(with_t2i) != pixels(plain)
    from_pth = run(runtime, t2i_unit(model="t2iadapter_tiny_pth"))
    assert from_pth.warnings == [] and pixels(from_pth) not in (pixels(plain), pixels(with_t2i))
    use_extension_package()
    from easel_controlnet.inject import ControlStepHook

    loaded = runtime.models.get()
    unet = loaded.model.unet
    adapter = load_t2i_adapter(data / "models" / "ControlNet" / "t2iadapter_tiny.safetensors",
                               base=loaded.family.unet, device="cpu", dtype=torch.float32)
    hint = torch.from_numpy(np.asarray(decode_png(picture()).convert("RGB"),
                                       dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        features = adapter(hint)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    t = torch.tensor([500.0, 500.0])
    outputs = {}
    for mode in ("Balanced", "My prompt is more important", "ControlNet is more important"):
        params = step_params(x, context)
        ready = unit_ready(data, runtime, t2i_unit(weight=0.7, control_mode=mode))
        ControlStepHook([], [ready])(params)
        with torch.no_grad():
            outputs[mode] = unet(x, t, context, patches=params.unet_kwargs["patches"])
    soft = [0.25, 0.62][:len(features)]
    direct = {
        "Balanced": T2IAdapterPatch(features=features, weight=0.7, row_images=[0, 0],
                                    unet=loaded.family.unet),
        "soft": T2IAdapterPatch(features=[f * s for f, s in zip(features, soft)], weight=0.7,
                                row_images=[0, 0], unet=loaded.family.unet),
    }
    with torch.no_grad():
        by_hand = {k: unet(x, t, context, patches=UNetPatches((p,))) for k, p in direct.items()}
        without = unet(x, t, context)
    assert torch.equal(outputs["Balanced"], by_hand["Balanced"])
    assert torch.equal(outputs["My prompt is more important"], by_hand["soft"])
    cond_only = outputs["ControlNet is more important"]  # soft, positive rows only
    assert torch.equal(cond_only[0], by_hand["soft"][0])
    assert torch.equal(cond_only[1], without[1])
    assert not torch.allclose(by_hand["Balanced"], without)


def test_t2i_features_are_computed_once_per_size(data, runtime):
    use_extension_package()
    from easel_controlnet.inject import ControlStepHook

    ready = unit_ready(data, runtime, t2i_unit())
    calls = []
    ready.model.register_forward_hook(lambda *_: calls.append(1))
    context = torch.zeros(2, 77, 32)
    for step in range(3):
        ControlStepHook([], [ready])(step_params(torch.zeros(2, 4, 8, 8), context, step=step))
    ControlStepHook([], [ready])(step_params(torch.zeros(2, 4, 16, 16), context, step=1))
    assert len(calls) == 2  # the 8x8 latent once, the 16x16 (hires) latent once


def test_style_adapter_appends_tokens_to_the_positive_rows(data, runtime):
    use_extension_package()
    from easel_controlnet.inject import ControlStepHook

    ready = unit_ready(data, runtime, style_unit(weight=0.5))
    context = torch.randn(2, 77, 32)
    params = step_params(torch.zeros(2, 4, 8, 8), context)
    ControlStepHook([], [ready])(params)
    positive, negative = (c.crossattn for c in params.conds)
    assert positive.shape == negative.shape == (85, 32)
    assert torch.equal(positive[:77], context[0]) and torch.equal(negative[:77], context[1])
    assert torch.equal(positive[77:], ready.tokens * 0.5) and ready.tokens.abs().sum() > 0
    assert not negative[77:].any()  # the negative prompt gets zeros, as in the extension
    styled = run(runtime, style_unit())
    assert styled.warnings == [] and pixels(styled) != pixels(run(runtime))


def test_t2i_ip_adapter_and_controlnet_in_one_job(runtime):
    results = [run(runtime, *units) for units in (
        (), (t2i_unit(),), (ip_unit(),), (cn_unit(),), (t2i_unit(), ip_unit(), cn_unit()),
        (t2i_unit(), ip_unit(), cn_unit(guidance_end=0.3)))]
    assert all(result.warnings == [] for result in results)
    assert len({pixels(result) for result in results}) == len(results)
    infotext = results[4].infotexts[0]
    assert all(f"ControlNet {i}: " in infotext for i in range(3))


def test_t2i_adapter_with_hires_fix(runtime):
    def job(*units):
        params = Txt2ImgParams(prompt="a square", seed=11, width=64, height=64, steps=2,
                               sampler_name="Euler", do_not_save_samples=True, enable_hr=True,
                               hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.5,
                               alwayson_scripts={"controlnet": {"args": list(units)}})
        return finish(txt2img(runtime, params))[0]

    controlled = job(t2i_unit(), ip_unit())
    assert controlled.warnings == [] and controlled.images[0].size == (128, 128)
    assert pixels(controlled) != pixels(job())


# ---- Tiled Diffusion: adapter maps follow the tiles --------------------------------------

def tiled_diffusion(**fields) -> dict:
    return {"Tiled Diffusion": {"args": {"enabled": True, **fields}}}


def run_tiled(runtime, units: list, tiling: dict):
    params = Txt2ImgParams(prompt="a square", seed=11, width=64, height=64, steps=3,
                           sampler_name="Euler", do_not_save_samples=True,
                           alwayson_scripts={"controlnet": {"args": units}, **tiling})
    return finish(txt2img(runtime, params))[0]


def test_one_tile_over_the_latent_with_adapters_is_the_untiled_image(runtime):
    units = [t2i_unit(), ip_unit()]
    plain = run(runtime, *units)
    one_tile = run_tiled(runtime, units, tiled_diffusion(tile_width=96, tile_height=96))
    assert one_tile.warnings == [] and pixels(one_tile) == pixels(plain)
    several = run_tiled(runtime, units, tiled_diffusion(tile_width=4, tile_height=4, overlap=2))
    assert several.warnings == [] and pixels(several) != pixels(plain)


def test_t2i_features_are_cropped_to_each_tile_not_squeezed():
    use_extension_package()
    from easel_controlnet.adapters import T2IAdapterUnit, UnitT2IPatch

    from modules.sampling import tiled_diffusion as td

    class Adapter:
        class config:  # noqa: N801 (stands in for T2IAdapterConfig)
            downscale = 8

        def __call__(self, hint):  # the "features": the hint at 1/8 and 1/16 of its size
            return [F.avg_pool2d(hint, 8), F.avg_pool2d(hint, 16)]

    hint = torch.rand(2, 3, 64, 128)
    unit = T2IAdapterUnit(model=Adapter(), hint=hint, unet=TINY_SD15.unet, weight=1.0)
    full = unit.features_for(8, 16)
    patch = UnitT2IPatch(features=unit.features_for(4, 6), weight=1.0, row_images=[0, 1],
                         unet=TINY_SD15.unet, unit=unit)
    views = [td.TileView(1, td.Window(2, 4, 4, 6), 8, 16),
             td.TileView(0, td.Window(4, 10, 4, 6), 8, 16)]
    tiled = patch.for_tiles(views)
    assert torch.equal(tiled.features[0][0], full[0][1, :, 2:6, 4:10])
    assert torch.equal(tiled.features[0][1], full[0][0, :, 4:8, 10:16])
    assert torch.equal(tiled.features[1][0], full[1][1, :, 1:3, 2:5])
    assert torch.equal(tiled.features[1][1], full[1][0, :, 2:4, 5:8])
    assert tiled.row_images == [0, 1]


def test_models_in_a1111s_extension_folder_are_listed_and_run(runtime, data, client):
    """A1111's ControlNet extension kept models in extensions/sd-webui-controlnet/models:
    a migrated data folder's files there are listed after models/ControlNet's and run."""
    import shutil

    legacy = data / "extensions" / "sd-webui-controlnet" / "models"
    legacy.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "models" / "ControlNet" / "t2iadapter_tiny.safetensors",
                legacy / "t2i_legacy.safetensors")
    listed = client.get("/controlnet/model_list", headers=AUTH).json()["model_list"]
    assert any(name.startswith("t2i_legacy [") for name in listed)
    moved = run(runtime, t2i_unit(model="t2i_legacy"))
    assert moved.warnings == [] and "t2i_legacy" in moved.infotexts[0]
    assert pixels(moved) == pixels(run(runtime, t2i_unit()))  # the same weights
