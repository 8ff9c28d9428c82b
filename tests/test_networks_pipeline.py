"""LoRAs and embeddings through txt2img on a tiny SD1 model: isolation, infotext, warnings."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from modules.infotext import parse_infotext
from modules.networks.lora import name_map
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.helpers.lora_files import kohya_lora, lora_group
from tests.tiny import TINY_SD15

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 5, "sampler_name": "Euler",
         "do_not_save_samples": True}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    runtime = tiny_runtime(data, {"tiny": TINY_SD15})
    loaded = runtime.models.get()
    names = name_map(loaded.patcher)
    folder = runtime.paths.lora_dir
    folder.mkdir(parents=True, exist_ok=True)
    tensors = kohya_lora(names, ("lora_unet_", "lora_te_"), rank=4, alpha=4.0, scale=None)
    save_file(tensors, str(folder / "style.safetensors"), metadata={"ss_output_name": "styl"})
    # An SDXL-named LoRA (LDM names with SDXL's blocks) and one with a wrong-shaped layer.
    generator = torch.Generator().manual_seed(9)
    sdxl = {f"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.{k}": v
            for k, v in lora_group(next(iter(names.targets.values())), 4, generator).items()}
    save_file(sdxl, str(folder / "xl.safetensors"))
    bad = dict(tensors)
    key = next(k for k in bad if k.endswith("attn1_to_q.lora_down.weight"))
    bad[key] = torch.zeros(4, 7)
    save_file(bad, str(folder / "badshape.safetensors"))
    truncated = (folder / "style.safetensors").read_bytes()[:500]
    (folder / "truncated.safetensors").write_bytes(truncated)
    return runtime


def run(runtime, prompt, **fields):
    return finish(txt2img(runtime, Txt2ImgParams(prompt=prompt, **{**SMALL, **fields})))[0]


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in [*model.state_dict().items()]:
        h.update(name.encode())
        # reshape(-1): a channels-last 1x1 conv weight counts as contiguous but keeps odd strides.
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def interleave(*generators):
    """Advance several jobs one step each in turn; return their results."""
    results = [None] * len(generators)
    live = dict(enumerate(generators))
    while live:
        for index, generator in list(live.items()):
            try:
                next(generator)
            except StopIteration as stop:
                results[index] = stop.value
                del live[index]
    return results


def test_interleaved_jobs_equal_jobs_run_alone_and_base_is_untouched(runtime):
    model = runtime.models.get().model
    before = digest(model)
    with_lora = run(runtime, "a cat <lora:style:1>")
    without = run(runtime, "a cat")
    assert with_lora.images[0].tobytes() != without.images[0].tobytes()
    assert digest(model) == before
    a, b = interleave(txt2img(runtime, Txt2ImgParams(prompt="a cat <lora:style:1>", **SMALL)),
                      txt2img(runtime, Txt2ImgParams(prompt="a cat", **SMALL)))
    assert a.images[0].tobytes() == with_lora.images[0].tobytes()
    assert b.images[0].tobytes() == without.images[0].tobytes()
    assert digest(model) == before


def test_lora_hashes_in_infotext_and_alias(runtime):
    result = run(runtime, "a cat <lora:styl:0.5> <lyco:style:te=0.2:unet=-0.5>")
    parsed = parse_infotext(result.infotexts[0])
    short = runtime.networks.loras.shorthash(runtime.networks.loras.find("style"))
    assert len(short) == 12
    assert parsed["Lora hashes"] == f"styl: {short}, style: {short}"
    assert not result.warnings


def test_multipliers_matter(runtime):
    full = run(runtime, "a cat <lora:style:1>")
    half = run(runtime, "a cat <lora:style:0.5>")
    te_only = run(runtime, "a cat <lora:style:1:0>")
    plain = run(runtime, "a cat")
    images = {r.images[0].tobytes() for r in (full, half, te_only, plain)}
    assert len(images) == 4


WRONG = {
    "<lora:nope:1>": "LoRA 'nope' not found",
    "<lora:xl:1>": "none of its 1 modules match this model",
    "<lora:badshape:1>": "badshape.safetensors: 1 layers skipped",
    "<lora:truncated:1>": "truncated.safetensors) could not be read",
    "<lora:style:abc>": "ignored",
    "<lora:../../Stable-diffusion/tiny:1>": "not found",
    "<hypernet:h:1>": "hypernetwork 'h' not found",
}


def test_wrong_files_are_warnings_and_generation_goes_on(runtime):
    result = run(runtime, "a cat " + " ".join(WRONG))
    assert len(result.images) == 1
    for expected in WRONG.values():
        assert any(expected in warning for warning in result.warnings), (expected, result.warnings)


def test_textual_inversion_used_by_name_with_ti_hashes(runtime):
    folder = runtime.paths.embeddings_dir
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_param": {"*": torch.randn(2, 32)}, "name": "other", "step": 12,
                "sd_checkpoint": "abc", "sd_checkpoint_name": "tiny"}, folder / "shiny.pt")
    save_file({"emb_params": torch.randn(1, 768)}, str(folder / "wide.safetensors"))
    runtime.networks.embeddings.refresh()
    plain = run(runtime, "a cat")
    used = run(runtime, "a cat shiny", negative_prompt="blurry")
    assert used.images[0].tobytes() != plain.images[0].tobytes()
    parsed = parse_infotext(used.infotexts[0])
    assert parsed["TI hashes"].startswith("shiny: ") and len(parsed["TI hashes"]) == 7 + 12
    assert "TI hashes" not in parse_infotext(plain.infotexts[0])


def test_api_lists_loras_and_embeddings(runtime):
    from fastapi.testclient import TestClient

    from modules.api.app import create_api_app

    folder = runtime.paths.embeddings_dir
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_param": {"*": torch.randn(3, 32)}, "step": 7}, folder / "api-emb.pt")
    client = TestClient(create_api_app(runtime))
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200
    loras = {item["name"]: item for item in client.get("/sdapi/v1/loras").json()}
    assert loras["style"]["alias"] == "styl"
    assert loras["style"]["metadata"] == {"ss_output_name": "styl"}
    embeddings = client.get("/sdapi/v1/embeddings").json()
    assert embeddings["loaded"]["api-emb"] == {"step": 7, "sd_checkpoint": None,
                                              "sd_checkpoint_name": None, "shape": 32,
                                              "vectors": 3}
    assert "wide" not in embeddings["loaded"]
