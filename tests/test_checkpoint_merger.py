"""The Checkpoint Merger on tiny random checkpoints: formulas, fp16, VAE, metadata, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from modules.models.families import VAE_PREFIX
from modules.models.merge import MergeParams, output_stem, run_merge, vae_choices
from modules.models.merge_plan import (
    INPUT_CONV,
    MergeInputs,
    Step,
    merged_value,
    plan_merge,
)
from modules.models.safetensors_io import TensorInfo
from modules.paths import ROOT
from modules.pipeline.params import ParamsError, Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.checkpoints import finish, tiny_runtime, write_tiny_checkpoint
from tests.tiny import TINY_SD2, TINY_SD15

POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """One data folder for the module: tests add files under names of their own."""
    data = tmp_path_factory.mktemp("data")
    rt = tiny_runtime(data, {})
    folder = data / "models" / "Stable-diffusion"
    for seed, name in enumerate("abc"):
        path = write_tiny_checkpoint(folder / f"{name}.safetensors", TINY_SD15, seed=seed)
        add_position_ids(path, offset=seed)
    yield rt
    rt.jobs.stop()


def add_position_ids(path, *, offset):
    """Merged files in the wild store float position_ids; they must never be merged."""
    with open(path, "rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
        metadata = json.loads(stream.read(length))["__metadata__"]
    state = load_file(str(path))
    state[POSITION_IDS] = torch.arange(77, dtype=torch.float32)[None] + offset
    save_file(state, str(path), metadata=metadata)


def tensors(runtime, name):
    return load_file(str(runtime.paths.checkpoint_dirs[0] / name))


def merged_keys(state):
    return [k for k, v in state.items() if v.is_floating_point() and k != POSITION_IDS]


def test_weighted_sum_is_a_times_one_minus_m_plus_b_times_m(runtime):
    result = run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                            multiplier=0.3, custom_name="ws"))
    assert result.path.name == "ws.safetensors"
    out, a, b = load_file(str(result.path)), tensors(runtime, "a.safetensors"), \
        tensors(runtime, "b.safetensors")
    assert set(out) == set(a)
    for key in merged_keys(a):
        assert torch.equal(out[key], a[key] * (1 - 0.3) + b[key] * 0.3), key
    assert torch.equal(out[POSITION_IDS], a[POSITION_IDS])
    assert not torch.equal(out[merged_keys(a)[0]], a[merged_keys(a)[0]])


def test_add_difference_is_a_plus_b_minus_c_times_m(runtime):
    result = run_merge(runtime, MergeParams(
        primary_model_name="a", secondary_model_name="b", tertiary_model_name="c",
        interp_method="Add difference", multiplier=0.75))
    assert result.path.name == "a + 0.75(b - c).safetensors"
    out = load_file(str(result.path))
    a, b, c = (tensors(runtime, f"{n}.safetensors") for n in "abc")
    for key in merged_keys(a):
        assert torch.equal(out[key], a[key] + (b[key] - c[key]) * 0.75), key


def test_no_interpolation_saves_fp16_copy_of_a(runtime):
    result = run_merge(runtime, MergeParams(primary_model_name="a",
                                            interp_method="No interpolation",
                                            save_as_half=True, custom_name="half"))
    out, a = load_file(str(result.path)), tensors(runtime, "a.safetensors")
    for key, value in a.items():
        if value.is_floating_point():
            assert out[key].dtype == torch.float16 and torch.equal(out[key], value.half()), key
        else:
            assert torch.equal(out[key], value)


def test_generated_name_follows_a1111(runtime):
    result = run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                            multiplier=0.25))
    assert result.path.name == "0.75(a) + 0.25(b).safetensors"
    assert result.info.title.startswith("0.75(a) + 0.25(b).safetensors [")
    assert result.info.title in [i.title for i in runtime.models.checkpoints()]


def test_baked_vae_keys_equal_the_vae_file(runtime):
    vae_file = runtime.paths.vae_dir / "tiny-vae.safetensors"
    vae_file.parent.mkdir(parents=True, exist_ok=True)
    donor = tensors(runtime, "c.safetensors")
    vae = {k[len(VAE_PREFIX):]: v for k, v in donor.items() if k.startswith(VAE_PREFIX)}
    save_file(vae, str(vae_file))
    assert vae_choices(runtime)[0] == "None" and "tiny-vae.safetensors" in vae_choices(runtime)
    result = run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                            bake_in_vae="tiny-vae.safetensors", custom_name="v"))
    out = load_file(str(result.path))
    assert len(vae) > 10
    for key, value in vae.items():
        assert torch.equal(out[VAE_PREFIX + key], value), key
    recipe = json.loads(load_metadata(result.path)["sd_merge_recipe"])
    assert recipe["bake_in_vae"] == "tiny-vae.safetensors"


def load_metadata(path):
    with open(path, "rb") as stream:
        length = int.from_bytes(stream.read(8), "little")
        return json.loads(stream.read(length))["__metadata__"]


def test_metadata_has_a1111_recipe_and_models(runtime):
    result = run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                            multiplier=0.5, custom_name="meta",
                                            discard_weights=r"model_ema\.",
                                            metadata_json='{"author": "me", "n": 2}'))
    metadata = load_metadata(result.path)
    assert all(isinstance(v, str) for v in metadata.values())
    assert metadata["format"] == "pt" and metadata["author"] == "me" and metadata["n"] == "2"
    assert "easel.family" in metadata
    recipe = json.loads(metadata["sd_merge_recipe"])
    listed = {i.name: i.hashed(runtime.models.hash_cache) for i in runtime.models.checkpoints()}
    assert recipe == {
        "type": "webui", "primary_model_hash": listed["a.safetensors"].sha256,
        "secondary_model_hash": listed["b.safetensors"].sha256, "tertiary_model_hash": None,
        "interp_method": "Weighted sum", "multiplier": 0.5, "save_as_half": False,
        "custom_name": "meta", "config_source": "A, B or C", "bake_in_vae": None,
        "discard_weights": r"model_ema\.", "is_inpainting": False,
        "is_instruct_pix2pix": False}
    models = json.loads(metadata["sd_merge_models"])
    assert models[listed["a.safetensors"].sha256]["name"] == "a.safetensors"
    b = listed["b.safetensors"]
    assert models[b.sha256]["legacy_hash"] == b.legacy_hash
    # a merge of the merge carries the earlier recipe along
    again = run_merge(runtime, MergeParams(primary_model_name="meta", secondary_model_name="c",
                                           custom_name="meta2"))
    chained = json.loads(load_metadata(again.path)["sd_merge_models"])
    assert listed["a.safetensors"].sha256 in chained
    assert chained[result.info.sha256]["sd_merge_recipe"]["multiplier"] == 0.5


def test_without_metadata_only_the_architecture_is_kept(runtime):
    result = run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                            save_metadata=False, custom_name="bare"))
    assert set(load_metadata(result.path)) == {"easel.family"}


def test_discard_weights_removes_matching_keys(runtime):
    result = run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                            discard_weights=r"^cond_stage_model\.",
                                            custom_name="discard"))
    out = load_file(str(result.path))
    assert out and not any(k.startswith("cond_stage_model.") for k in out)


def test_copy_config_copies_the_yaml_beside(runtime):
    folder = runtime.paths.checkpoint_dirs[0]
    (folder / "b.yaml").write_text("model: b\n")
    run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                   custom_name="cfg"))
    assert (folder / "cfg.yaml").read_text() == "model: b\n"
    run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                   custom_name="nocfg", config_source="Don't"))
    assert not (folder / "nocfg.yaml").exists()


def test_ckpt_input_and_output_use_the_safe_loader(runtime):
    folder = runtime.paths.checkpoint_dirs[0]
    torch.save({"state_dict": tensors(runtime, "b.safetensors")}, folder / "pickled.ckpt")
    result = run_merge(runtime, MergeParams(primary_model_name="a",
                                            secondary_model_name="pickled.ckpt",
                                            checkpoint_format="ckpt", custom_name="out"))
    assert result.path.name == "out.ckpt"
    runtime.models.select(result.info)  # through the allow-list unpickler
    loaded = torch.load(result.path, weights_only=True)["state_dict"]
    a, b = tensors(runtime, "a.safetensors"), tensors(runtime, "b.safetensors")
    key = merged_keys(a)[5]
    assert torch.equal(loaded[key], a[key] * 0.7 + b[key] * 0.3)


@pytest.mark.slow
def test_merged_tiny_model_loads_and_generates(runtime):
    result = run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                            custom_name="gen", save_as_half=True))
    runtime.models.select(result.info)
    out = finish(txt2img(runtime, Txt2ImgParams(prompt="x", width=64, height=64, steps=2,
                                                do_not_save_samples=True)))[0]
    assert out.images[0].size == (64, 64)
    assert "Model: gen" in out.infotexts[0]


@pytest.mark.parametrize("changes, field, reason", [
    ({"primary_model_name": "nope"}, "primary_model_name", "no checkpoint named 'nope'"),
    ({"secondary_model_name": ""}, "secondary_model_name", "Weighted sum needs this model"),
    ({"interp_method": "Add difference"}, "tertiary_model_name", "needs this model"),
    ({"secondary_model_name": "a"}, "secondary_model_name", "is the primary model itself"),
    ({"interp_method": "Add difference", "tertiary_model_name": "b"}, "tertiary_model_name",
     "is the secondary model itself"),
    ({"multiplier": 1.5}, "multiplier", "must be a number in [0, 1]"),
    ({"multiplier": float("nan")}, "multiplier", "must be a number"),
    ({"interp_method": "Average"}, "interp_method", "is not one of"),
    ({"checkpoint_format": "pt"}, "checkpoint_format", "is not one of"),
    ({"custom_name": "../escape"}, "custom_name", "is not a file name"),
    ({"custom_name": "a"}, "custom_name", "already exists"),
    ({"discard_weights": "("}, "discard_weights", "not a regular expression"),
    ({"metadata_json": "[1]"}, "metadata_json", "must be a JSON object"),
    ({"metadata_json": "{"}, "metadata_json", "not valid JSON"),
    ({"bake_in_vae": "missing.pt"}, "bake_in_vae", "no VAE named 'missing.pt'"),
])
def test_errors_name_the_field(runtime, changes, field, reason):
    params = MergeParams(**{"primary_model_name": "a", "secondary_model_name": "b", **changes})
    before = sorted(runtime.paths.checkpoint_dirs[0].iterdir())
    with pytest.raises(ParamsError) as caught:
        run_merge(runtime, params)
    assert caught.value.field == field and reason in caught.value.reason
    assert sorted(runtime.paths.checkpoint_dirs[0].iterdir()) == before  # nothing written


def test_other_architecture_is_refused_naming_key_and_shapes(runtime):
    write_tiny_checkpoint(runtime.paths.checkpoint_dirs[0] / "sd2.safetensors", TINY_SD2)
    with pytest.raises(ParamsError) as caught:
        run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="sd2"))
    assert caught.value.field == "secondary_model_name"
    assert "different architectures" in caught.value.reason
    assert ("shape [" in caught.value.reason
            or "has no model.diffusion_model." in caught.value.reason)
    assert not list(runtime.paths.checkpoint_dirs[0].glob("*sd2)*"))


def test_vae_of_another_shape_is_refused(runtime):
    vae_file = runtime.paths.vae_dir / "odd.safetensors"
    vae_file.parent.mkdir(parents=True, exist_ok=True)
    vae = {k[len(VAE_PREFIX):]: v for k, v in tensors(runtime, "c.safetensors").items()
           if k.startswith(VAE_PREFIX)}
    vae["decoder.conv_out.weight"] = torch.zeros(3, 7, 3, 3)
    save_file(vae, str(vae_file))
    with pytest.raises(ParamsError, match=r"first_stage_model.decoder.conv_out.weight: .* "
                                          r"has shape \[3, 32, 3, 3\] but the baked VAE has "
                                          r"\[3, 7, 3, 3\]") as caught:
        run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                       bake_in_vae="odd.safetensors"))
    assert caught.value.field == "bake_in_vae"


def info(*shape):
    return TensorInfo(shape=shape, dtype="F32")


def test_inpainting_a_merges_the_first_four_input_channels():
    a = {INPUT_CONV: info(32, 9, 3, 3), "model.diffusion_model.out.2.weight": info(4, 32, 3, 3)}
    b = {INPUT_CONV: info(32, 4, 3, 3), "model.diffusion_model.out.2.weight": info(4, 32, 3, 3)}
    steps = plan_merge(MergeInputs(a=a, b=b, c=b, vae=None, labels=("A", "B", "C")),
                       method="Add difference", save_as_half=False, discard=None)
    assert steps[0] == Step(INPUT_CONV, "merge", info(32, 9, 3, 3), 4)
    ta, tb, tc = torch.randn(32, 9, 3, 3), torch.randn(32, 4, 3, 3), torch.randn(32, 4, 3, 3)
    out = merged_value(steps[0], ta, tb, tc, method="Add difference", multiplier=1.0)
    assert torch.equal(out[:, :4], ta[:, :4] + (tb - tc) * 1.0)
    assert torch.equal(out[:, 4:], ta[:, 4:])
    with pytest.raises(ParamsError, match="the primary model \\(A\\) must be the special one"):
        plan_merge(MergeInputs(a=b, b=a, c=None, vae=None, labels=("A", "B", "C")),
                   method="Weighted sum", save_as_half=False, discard=None)


def test_inpainting_output_name_says_so():
    from modules.models.checkpoints import CheckpointInfo

    models = [CheckpointInfo(path=f"/m/{n}.safetensors", name=f"{n}.safetensors",
                             legacy_hash="0") for n in "abc"]
    params = MergeParams(primary_model_name="a", interp_method="Add difference")
    assert output_stem(params, models, {INPUT_CONV: info(320, 9, 3, 3)}) == \
        "a + 0.3(b - c).inpainting"


@pytest.mark.slow
def test_merge_of_two_copies_of_the_demo_model_draws_the_same_image(tmp_path):
    """Pixel proof through the real loader: (demo + demo) / 2 is the demo model exactly."""
    runtime = tiny_runtime(tmp_path, {})
    folder = runtime.paths.checkpoint_dirs[0]
    folder.mkdir(parents=True, exist_ok=True)
    demo = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
    for name in ("demo-a", "demo-b"):
        shutil.copyfile(demo, folder / f"{name}.safetensors")
    merged = run_merge(runtime, MergeParams(primary_model_name="demo-a",
                                            secondary_model_name="demo-b", multiplier=0.5))
    params = dict(prompt="a red circle", width=64, height=64, steps=8, seed=3,
                  do_not_save_samples=True)
    images = []
    for title in ("demo-a", merged.info.title):
        runtime.models.select(runtime.models.find(title))
        images.append(finish(txt2img(runtime, Txt2ImgParams(**params)))[0].images[0])
    assert images[0].tobytes() == images[1].tobytes()
    runtime.jobs.stop()


def test_merger_tab_builds_and_its_handler_merges(runtime):
    import gradio as gr

    from webui.tabs import merger as merger_tab

    with gr.Blocks() as blocks:
        top = gr.Dropdown(choices=[])
        tab = merger_tab.build(runtime, top)
    ids = {c.elem_id for c in blocks.blocks.values()}
    for name in (*merger_tab.MODEL_FIELDS, "custom_name", "interp_amount", "interp_method",
                 "checkpoint_format", "save_as_half", "config_method", "bake_in_vae",
                 "discard_weights", "merge", "result"):
        assert f"modelmerger_{name}" in ids
    titles = [i.title for i in runtime.models.checkpoints()]
    values = {name: tab.fields[name].value for name in merger_tab.FIELD_ORDER}
    values.update(primary_model_name=next(t for t in titles if t.startswith("a.")),
                  secondary_model_name=next(t for t in titles if t.startswith("b.")),
                  custom_name="from-ui")
    html = merger_tab.merge(runtime, values)
    assert "from-ui.safetensors" in html
    choices = [choice[0] for choice in merger_tab.refreshed_lists(runtime)[0].choices]
    assert any(c.startswith("from-ui.safetensors [") for c in choices)
    with pytest.raises(gr.Error, match=r"Secondary model \(B\): Weighted sum needs this model"):
        merger_tab.merge(runtime, {**values, "secondary_model_name": None, "custom_name": "x"})
