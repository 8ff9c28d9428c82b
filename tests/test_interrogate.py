"""Interrogation (CLIP and DeepBooru) from the model files to the API's answer.

Tiny random-weight models of the real architectures are saved in the real layouts: a
`BlipForConditionalGeneration` and a `CLIPModel` with `save_pretrained` (safetensors)
under `models/BLIP/tiny/` and `models/clip/tiny/`, and a DeepDanbooru state dict with
its `tags` list under `models/torch_deepdanbooru/model-resnet_custom_v3.pt` (the real key
names and block counts, channel widths scaled down). Checked: the caption and the CLIP
matches against a direct computation with transformers, the tags against the network's
probabilities, missing models and damaged files as clear 4xx answers, the img2img tab's
buttons' handler and the Loopback script's `append_interrogation`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from modules.infotext import parse_infotext
from modules.nn.deepbooru import DeepDanbooruNet, block_plan, conv_shapes
from modules.upscaling.interrogate import clip_interrogator as CI
from modules.upscaling.interrogate.service import DEFAULTS, Interrogators
from tests.helpers.api_runtime import make_runtime, png_base64

TAGS = ["1girl", "red_(color)", "rating:safe", "solo", "long_hair", "blue_sky"]
SIGNS = [1.0, 1.0, 1.0, -1.0, 1.0, -1.0]  # head rows: + kept (above 0.5), - dropped
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + [f"w{i}" for i in range(58)]


def picture() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))


def write_blip(folder: Path) -> None:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(0)
    config = BlipConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=64, bos_token_id=5, pad_token_id=0,
                         sep_token_id=3, eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    folder.mkdir(parents=True)
    BlipForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]").save_pretrained(folder)


def write_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    folder.mkdir(parents=True)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)


def write_deepbooru(path: Path) -> None:
    torch.manual_seed(2)
    network = DeepDanbooruNet(base=2, tags=len(TAGS))
    state = network.state_dict()
    _, head = block_plan()
    state[f"n_Conv_{head}.weight"] = torch.tensor(SIGNS).view(-1, 1, 1, 1).expand(
        -1, state[f"n_Conv_{head}.weight"].shape[1], 1, 1).clone()
    path.parent.mkdir(parents=True)
    torch.save({**state, "tags": list(TAGS)}, path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrogate-data")
    write_blip(root / "models" / "BLIP" / "tiny")
    write_clip(root / "models" / "clip" / "tiny")
    write_deepbooru(root / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
    return root


@pytest.fixture(scope="module")
def runtime(data):
    rt = make_runtime(data)
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def ask(client, model: str, image: Image.Image | None = None):
    return client.post("/sdapi/v1/interrogate",
                       json={"image": png_base64(image or picture()), "model": model})


# ------------------------------------------------------------------ the network


def test_deepbooru_layout_is_the_ports():
    """The TorchDeepDanbooru port's layer table at full size (spot checks of its
    constructor), and a scaled network has exactly its key names."""
    shapes = conv_shapes(64, 9176)
    assert len(shapes) == 179 and len(block_plan()[0]) == 57
    assert shapes[0] == (3, 64, 7, 2) and shapes[1] == (64, 256, 1, 1)
    assert shapes[11] == (256, 512, 1, 2) and shapes[13] == (128, 128, 3, 2)
    assert shapes[36] == (512, 1024, 1, 2) and shapes[97] == (1024, 256, 1, 1)
    assert shapes[98] == (256, 256, 3, 2) and shapes[100] == (1024, 1024, 1, 2)
    assert shapes[158] == (1024, 2048, 1, 2) and shapes[168] == (2048, 4096, 1, 2)
    assert shapes[177] == (1024, 4096, 1, 1) and shapes[178] == (4096, 9176, 1, 1)
    keys = set(DeepDanbooruNet(base=2, tags=3).state_dict())
    expected = {f"n_Conv_{i}.weight" for i in range(179)} | {
        f"n_Conv_{i}.bias" for i in range(178)}
    assert keys == expected


# ------------------------------------------------------------------ CLIP


def test_clip_answer_is_the_caption_then_the_ranked_matches(client, data):
    from transformers import BertTokenizer, BlipForConditionalGeneration, CLIPModel

    response = ask(client, "clip")
    assert response.status_code == 200, response.text
    caption = response.json()["caption"]
    image = picture()
    # BLIP directly: the picture squashed to 32x32 (bicubic) with CLIP's mean / std
    blip = BlipForConditionalGeneration.from_pretrained(data / "models/BLIP/tiny").eval()
    norm = (np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC), np.float32) / 255
            - [0.48145466, 0.4578275, 0.40821073]) / [0.26862954, 0.26130258, 0.27577711]
    pixels = torch.tensor(norm, dtype=torch.float32).permute(2, 0, 1)[None]
    with torch.no_grad():
        ids = blip.generate(pixel_values=pixels, num_beams=1, min_length=24, max_length=48)
    tokenizer = BertTokenizer.from_pretrained(data / "models/BLIP/tiny")
    expected = [tokenizer.decode(ids[0], skip_special_tokens=True).strip()]
    # CLIP directly: shortest side to 32, centre crop, cosine similarity, best of each list
    clip = CLIPModel.from_pretrained(data / "models/clip/tiny").eval()
    scaled = image.resize((43, 32), Image.Resampling.BICUBIC).crop((5, 0, 37, 32))
    norm = (np.asarray(scaled, np.float32) / 255 - [0.48145466, 0.4578275, 0.40821073]) / [
        0.26862954, 0.26130258, 0.27577711]
    with torch.no_grad():
        found = clip.get_image_features(
            pixel_values=torch.tensor(norm, dtype=torch.float32).permute(2, 0, 1)[None])
        found = CI._features(found)
        found = found / found.norm(dim=-1, keepdim=True)
        shipped = Interrogators(data / "models")._parts("clip")[1]  # its tokenizer only
        for category in CI.load_categories():
            tokens = shipped.tokenizer(list(category.items), padding=True,
                                       return_tensors="pt")
            text = CI._features(clip.get_text_features(**tokens))
            text = text / text.norm(dim=-1, keepdim=True)
            cosine = (found @ text.T)[0]
            best = torch.argsort(cosine, descending=True)[:category.top]
            expected += [category.items[int(i)] for i in best]
    assert caption == ", ".join(expected)
    assert [c.top for c in CI.load_categories()] == [1, 3, 1, 1]


def test_clip_settings_ranks_limit_and_skipped_categories(data):
    interrogators = Interrogators(data / "models")
    settings = {**DEFAULTS, "interrogate_return_ranks": True, "interrogate_clip_dict_limit": 2,
                "interrogate_clip_skip_categories": ("artists", "movements"),
                "interrogate_clip_max_length": 8, "interrogate_clip_min_length": 4}
    parts = interrogators.interrogate(picture(), "clip", settings).split(", ")
    assert len(parts) == 4  # caption, the 2 flavors left by the limit, 1 medium
    ranked = parts[1:]
    assert all(p.startswith("(") and p.endswith(")") for p in ranked), parts
    flavors = CI.load_categories()[1].items[:2]
    assert {p[1:].rsplit(":", 1)[0] for p in ranked[:2]} == set(flavors)  # limit 2: both
    scores = [float(p[:-1].rsplit(":", 1)[1]) for p in ranked[:2]]
    assert sum(scores) == pytest.approx(1.0, abs=2e-3)  # a softmax over the two lines


# ------------------------------------------------------------------ DeepBooru


def test_deepbooru_answer_is_the_tags_over_the_threshold(client, data):
    response = ask(client, "deepdanbooru")
    assert response.status_code == 200, response.text
    # + rows above 0.5 (features after ReLU are positive), rating:* dropped, sorted,
    # underscores to spaces, brackets escaped
    assert response.json()["caption"] == "1girl, long hair, red \\(color\\)"


def test_deepbooru_probabilities_equal_the_network(data):
    from modules.upscaling.interrogate import tagger

    network, tags = Interrogators(data / "models")._parts("deepbooru")
    assert tags == TAGS
    scores = tagger.probabilities(network, picture())
    assert [s > 0.5 for s in scores] == [s > 0 for s in SIGNS]
    settings = {**DEFAULTS, "deepbooru_sort_alpha": False, "deepbooru_use_spaces": False,
                "deepbooru_escape": False, "interrogate_return_ranks": True,
                "deepbooru_filter_tags": "long hair"}
    text = tagger.tag_text(tags, scores, settings)
    kept = sorted([(tags[i], scores[i]) for i in (0, 1)], key=lambda item: -item[1])
    assert text == ", ".join(f"({tag}:{score:.3f})" for tag, score in kept)


# ------------------------------------------------------------------ refusals


@pytest.fixture(scope="module")
def empty_client(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("interrogate-empty"))
    yield TestClient(create_api_app(rt)), rt
    rt.jobs.stop()


@pytest.mark.parametrize("model, needles", [
    ("clip", ["models/BLIP/", "config.json", "model.safetensors"]),
    ("deepdanbooru", ["models/torch_deepdanbooru/", "model-resnet_custom_v3.pt"]),
])
def test_missing_models_name_the_folder_and_file(empty_client, model, needles):
    response = ask(empty_client[0], model)
    assert response.status_code == 404, response.text
    assert all(needle in response.json()["detail"] for needle in needles), response.json()


def test_unknown_model_and_missing_image(empty_client):
    client = empty_client[0]
    response = ask(client, "wd14")
    assert response.status_code == 404 and response.json()["detail"] == "Model not found"
    response = client.post("/sdapi/v1/interrogate", json={"image": "", "model": "clip"})
    assert response.status_code == 404 and response.json()["detail"] == "Image not found"


class Evil:
    def __reduce__(self):
        return (print, ("never",))


@pytest.mark.parametrize("damage, model, needle", [
    ("blip-weights", "clip", "cannot load"),
    ("clip-config", "clip", "config.json"),
    ("deepbooru-bytes", "deepdanbooru", "model-resnet_custom_v3.pt"),
    ("deepbooru-global", "deepdanbooru", "refusing"),
    ("deepbooru-keys", "deepdanbooru", "resnet_custom_v3"),
])
def test_damaged_files_are_a_422_naming_the_file(empty_client, tmp_path, data, damage, model,
                                                 needle):
    import shutil

    client, rt = empty_client
    models = tmp_path / "models"
    shutil.copytree(data / "models", models)
    booru = models / "torch_deepdanbooru" / "model-resnet_custom_v3.pt"
    if damage == "blip-weights":
        (models / "BLIP/tiny/model.safetensors").write_bytes(b"\x10\x00" + b"x" * 64)
    elif damage == "clip-config":
        (models / "clip/tiny/config.json").write_text("{not json")
    elif damage == "deepbooru-bytes":
        booru.write_bytes(b"PK\x03\x04 damaged")
    elif damage == "deepbooru-global":
        booru.write_bytes(pickle.dumps({"tags": Evil()}))
    else:
        torch.save({"tags": TAGS, "conv.weight": torch.zeros(1)}, booru)
    rt.interrogators = Interrogators(models)
    try:
        response = ask(client, model)
    finally:
        rt.interrogators = None
    assert response.status_code == 422, response.text
    assert needle in response.json()["detail"], response.json()


# ------------------------------------------------------------------ UI and Loopback


def test_img2img_buttons_fill_the_prompt(runtime, client):
    from webui.tabs.img2img import interrogate_prompt

    image = picture()
    for model in ("clip", "deepdanbooru"):
        text = interrogate_prompt(runtime, model, "img2img", {"image": image})
        assert text == ask(client, model, image).json()["caption"]
    sketch = {"background": image, "layers": [], "composite": image}
    assert interrogate_prompt(runtime, "deepdanbooru", "sketch", {"sketch": sketch}) == \
        "1girl, long hair, red \\(color\\)"
    with pytest.raises(gr.Error, match="add a picture"):
        interrogate_prompt(runtime, "clip", "img2img", {"image": None})


def test_img2img_button_without_model_is_a_visible_error(empty_client):
    from webui.tabs.img2img import interrogate_prompt

    with pytest.raises(gr.Error, match="models/torch_deepdanbooru"):
        interrogate_prompt(empty_client[1], "deepdanbooru", "img2img", {"image": picture()})


def test_loopback_appends_the_interrogation_each_loop(client):
    body = {"prompt": "a cat", "init_images": [png_base64(picture())], "steps": 2,
            "width": 64, "height": 64, "seed": 7, "denoising_strength": 0.5,
            "script_name": "Loopback", "script_args": [2, 0.5, "Linear", "DeepBooru"]}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    infotexts = json.loads(response.json()["info"])["infotexts"]
    prompts = [parse_infotext(text)["Prompt"] for text in infotexts]
    assert prompts and all(p.startswith("a cat, ") for p in prompts), prompts
    assert any("1girl" in p for p in prompts)


def test_loopback_refuses_a_missing_interrogator(empty_client):
    client = empty_client[0]
    body = {"prompt": "a cat", "init_images": [png_base64(picture())], "steps": 2,
            "width": 64, "height": 64, "script_name": "Loopback",
            "script_args": [2, 0.5, "Linear", "CLIP"]}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 422 and "models/BLIP/" in response.text


def test_img2img_tab_wires_both_buttons_to_the_prompt(runtime):
    from webui.tabs import img2img

    with gr.Blocks() as blocks:
        tab = img2img.build(runtime)
    buttons = {c["props"].get("elem_id"): c["id"] for c in blocks.config["components"]
               if c["props"].get("value") in ("Interrogate CLIP", "Interrogate DeepBooru")}
    assert set(buttons) == {"interrogate", "deepbooru"}
    prompt = tab.panel.fields["prompt"]._id
    wired = {}
    for fn in blocks.fns.values():
        for block_id, event in fn.targets:
            if block_id in buttons.values() and event == "click":
                assert [o._id for o in fn.outputs] == [prompt]
                wired[block_id] = fn.fn
    assert set(wired) == set(buttons.values())
    pictures = [picture() if name == "image" else None for name in img2img.PICTURES]
    assert wired[buttons["deepbooru"]]("img2img", *pictures) == \
        "1girl, long hair, red \\(color\\)"


def test_blip_bin_weights_load_through_the_allow_list_unpickler(data, tmp_path):
    import shutil

    from safetensors.torch import load_file

    models = tmp_path / "models"
    shutil.copytree(data / "models", models)
    folder = models / "BLIP" / "tiny"
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    settings = {**DEFAULTS, "interrogate_clip_max_length": 10, "interrogate_clip_min_length": 4}
    assert Interrogators(models).interrogate(picture(), "clip", settings) == \
        Interrogators(data / "models").interrogate(picture(), "clip", settings)


@pytest.mark.slow
def test_full_size_deepbooru_file_loads_by_name_and_tags(tmp_path):
    """The real layer shapes (base 64, 9176 tags, about 600 MB) saved as A1111's file."""
    from modules.models.interrogate_files import load_deepbooru

    network = DeepDanbooruNet()
    tags = [f"tag_{i}" for i in range(9176)]
    path = tmp_path / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt"
    path.parent.mkdir(parents=True)
    torch.save({**network.state_dict(), "tags": tags}, path)
    del network
    loaded, names = load_deepbooru(tmp_path / "models", torch.device("cpu"))
    assert names == tags and sum(p.numel() for p in loaded.parameters()) > 100_000_000
    with torch.inference_mode():
        scores = loaded(torch.rand(1, 512, 512, 3))
    assert scores.shape == (1, 9176) and bool(((scores >= 0) & (scores <= 1)).all())
