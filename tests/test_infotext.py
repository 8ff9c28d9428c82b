"""Infotexts build byte for byte like A1111's and parse back like its paste does."""

from __future__ import annotations

import pytest

from modules.infotext import (
    GenerationInfo,
    build_infotext,
    create_infotext,
    ordered_params,
    parse_infotext,
    parse_infotext_raw,
    quote,
)
from modules.pipeline.infotext_fields import (
    infotext_to_request_fields,
    infotext_to_settings_overrides,
)

SD15_HASH = "6ce0161689"
SD15 = dict(model_hash=SD15_HASH, model_name="v1-5-pruned-emaonly")

EXAMPLE_1 = """a photo of a cat
Negative prompt: blurry, lowres
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"""  # noqa: E501

EXAMPLE_2 = """a photo of a cat
Steps: 50, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"""  # noqa: E501

EXAMPLE_3 = """masterpiece, (1girl:1.2), <lora:add_detail:0.6>, night city
Negative prompt: easynegative, lowres
Steps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 3000000000, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Variation seed: 111, Variation seed strength: 0.3, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1"""  # noqa: E501

EXAMPLE_4 = """a red hat
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 987654321, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75, Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, Version: v1.10.1"""  # noqa: E501

EXAMPLE_5 = r"""a cat, "quoted"
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Hires prompt: "a cat, \"quoted\", 8k", Version: v1.10.1"""  # noqa: E501


def test_example_1_ui_defaults() -> None:
    info = GenerationInfo(steps=20, sampler_name="DPM++ 2M", scheduler="Automatic",
                          cfg_scale=7, seed=1234567890, width=512, height=512, **SD15)
    # The sampler reports the effective schedule through the extra params.
    text = create_infotext(info, prompt="a photo of a cat", negative_prompt="blurry, lowres",
                           extra={"Schedule type": "Karras"}, version="v1.10.1")
    assert text == EXAMPLE_1


def test_example_2_api_defaults_keep_float_repr() -> None:
    info = GenerationInfo(steps=50, sampler_name="Euler", scheduler="Automatic",
                          cfg_scale=7.0, seed=42, width=512, height=512, **SD15)
    text = create_infotext(info, prompt="a photo of a cat", version="v1.10.1")
    assert text == EXAMPLE_2
    assert "CFG scale: 7.0," in text


def test_example_3_everything() -> None:
    info = GenerationInfo(
        steps=25, sampler_name="Euler a", scheduler="Automatic", cfg_scale=6.5,
        seed=3000000000, width=512, height=768, vae_hash="735e4c3a44",
        vae_name="vae-ft-mse-840000-ema-pruned.safetensors", subseed=111,
        subseed_strength=0.3, denoising_strength=0.45, clip_skip=2, **SD15)
    extra = {"Denoising strength": 0.45, "Hires upscale": 2, "Hires steps": 10,
             "Hires upscaler": "R-ESRGAN 4x+", "Lora hashes": "add_detail: 7c6bad76eb54",
             "TI hashes": "easynegative: c74b4e810b03"}
    text = create_infotext(
        info, prompt="masterpiece, (1girl:1.2), <lora:add_detail:0.6>, night city",
        negative_prompt="easynegative, lowres", extra=extra, version="v1.10.1")
    assert text == EXAMPLE_3


def test_example_4_inpaint() -> None:
    info = GenerationInfo(steps=20, sampler_name="DPM++ 2M", scheduler="Automatic",
                          cfg_scale=7, seed=987654321, width=512, height=512, **SD15)
    extra = {"Denoising strength": 0.75, "Mask blur": 4, "Inpaint area": "Only masked",
             "Masked area padding": 32, "Schedule type": "Karras"}
    assert create_infotext(info, prompt="a red hat", extra=extra, version="v1.10.1") == EXAMPLE_4


def test_example_5_json_quoting() -> None:
    info = GenerationInfo(steps=20, sampler_name="DPM++ 2M", scheduler="Karras",
                          cfg_scale=7, seed=1, width=512, height=512)
    text = create_infotext(info, prompt='a cat, "quoted"',
                           extra={"Hires prompt": 'a cat, "quoted", 8k'}, version="v1.10.1")
    assert text == EXAMPLE_5


def test_parse_example_5_exactly() -> None:
    assert parse_infotext_raw(EXAMPLE_5) == {
        "Prompt": 'a cat, "quoted"', "Negative prompt": "", "Steps": "20",
        "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": "1",
        "Size-1": "512", "Size-2": "512", "Hires prompt": 'a cat, "quoted", 8k',
        "Version": "v1.10.1",
    }
    parsed = parse_infotext(EXAMPLE_5)
    assert parsed["Clip skip"] == "1" and parsed["RNG"] == "GPU"
    assert parsed["Hires resize-1"] == 0 and parsed["Masked area padding"] == 32
    assert parsed["Schedule type"] == "Karras"  # present keys are not defaulted
    assert "Downcast alphas_cumprod" not in parsed
    assert "Emphasis" not in parsed


def test_parse_example_3_exactly() -> None:
    assert parse_infotext_raw(EXAMPLE_3) == {
        "Prompt": "masterpiece, (1girl:1.2), <lora:add_detail:0.6>, night city",
        "Negative prompt": "easynegative, lowres", "Steps": "25", "Sampler": "Euler a",
        "Schedule type": "Automatic", "CFG scale": "6.5", "Seed": "3000000000",
        "Size-1": "512", "Size-2": "768", "Model hash": SD15_HASH,
        "Model": "v1-5-pruned-emaonly", "VAE hash": "735e4c3a44",
        "VAE": "vae-ft-mse-840000-ema-pruned.safetensors", "Variation seed": "111",
        "Variation seed strength": "0.3", "Denoising strength": "0.45", "Clip skip": "2",
        "Hires upscale": "2", "Hires steps": "10", "Hires upscaler": "R-ESRGAN 4x+",
        "Lora hashes": "add_detail: 7c6bad76eb54", "TI hashes": "easynegative: c74b4e810b03",
        "Version": "v1.10.1",
    }
    assert parse_infotext(EXAMPLE_3)["Emphasis"] == "Original"  # the prompt uses ( )


@pytest.mark.parametrize("text", [EXAMPLE_1, EXAMPLE_2, EXAMPLE_4])
def test_examples_parse_back_to_their_params(text: str) -> None:
    parsed = parse_infotext_raw(text)
    prompt_lines = text.split("\n")[:-1]
    assert parsed["Prompt"] == prompt_lines[0]
    rebuilt = {k: v for k, v in parsed.items() if k not in ("Prompt", "Negative prompt")}
    rebuilt["Size"] = f"{rebuilt.pop('Size-1')}x{rebuilt.pop('Size-2')}"
    order = [entry.split(": ")[0] for entry in text.split("\n")[-1].split(", ")]
    params = {key: rebuilt[key] for key in order}
    assert build_infotext(parsed["Prompt"], parsed["Negative prompt"], params) == text


def test_quote_rules() -> None:
    assert quote(7) == "7" and quote(7.0) == "7.0" and quote("Euler a") == "Euler a"
    assert quote("a, b") == '"a, b"'
    assert quote("x: y") == '"x: y"'
    assert quote('line\n"two"') == r'"line\n\"two\""'
    assert quote("猫, 犬") == '"猫, 犬"'  # non-ASCII is kept, not \u-escaped


def test_build_skips_none_and_writes_bare_keys() -> None:
    params = {"Steps": 5, "Face restoration": None, "Pad conds": "Pad conds", "Eta": 0.5}
    assert build_infotext("p", "", params) == "p\nSteps: 5, Pad conds, Eta: 0.5"
    assert build_infotext("", "", {"Steps": 5}) == "Steps: 5"


def test_ordered_params_extra_keeps_core_position_and_version_last() -> None:
    params = ordered_params({"Steps": 1, "Seed": 2, "Schedule type": "Automatic"},
                            {"Hires upscale": 2, "Schedule type": "Karras"},
                            version="v1", user="bob")
    keys = [key for key, value in params.items() if value is not None]
    assert keys == ["Steps", "Schedule type", "Seed", "Hires upscale", "Version", "User"]
    assert params["Schedule type"] == "Karras"
    with pytest.raises(KeyError, match="Hires upscale"):
        ordered_params({"Hires upscale": 2}, {})


def test_core_params_omission_rules() -> None:
    base = dict(steps=1, sampler_name="Euler a", cfg_scale=7, seed=5, width=64, height=32)
    plain = GenerationInfo(**base, clip_skip=1, subseed=9, eta_noise_seed_delta=31337)
    assert {k for k, v in plain.core_params().items() if v is not None} == {
        "Steps", "Sampler", "CFG scale", "Seed", "Size"}
    full = GenerationInfo(**base, clip_skip=2, subseed=9, subseed_strength=0.2,
                          seed_resize_from_w=512, seed_resize_from_h=768,
                          eta_noise_seed_delta=31337, sampler_uses_ensd=True,
                          randn_source="NV", tiling=True, token_merging_ratio=0.5)
    text = create_infotext(full, prompt="x")
    assert text == ("x\nSteps: 1, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x32, "
                    "Variation seed: 9, Variation seed strength: 0.2, Seed resize from: 512x768, "
                    "Clip skip: 2, ENSD: 31337, Token merging ratio: 0.5, RNG: NV, Tiling: True")
    assert "RNG" not in create_infotext(GenerationInfo(**base, randn_source="GPU"), prompt="x")


@pytest.mark.parametrize("prompt, negative", [
    ('a, b: "c" \\ d', ""),
    ("line one\nline two, with comma", "neg one\nneg: two\nneg three"),
    ("日本語のプロンプト, café", "ñandú, 🙂"),
    ("(emphasis:1.3) [edit:to:0.5]", "x"),
])
def test_round_trip_prompts_and_quoted_values(prompt: str, negative: str) -> None:
    extra = {"Hires prompt": prompt, "Lora hashes": "a: 1, b: 2", "Note": 'say "hi"\nbye'}
    info = GenerationInfo(steps=20, sampler_name="Euler", cfg_scale=7.5, seed=3,
                          width=512, height=640)
    parsed = parse_infotext(create_infotext(info, prompt=prompt, negative_prompt=negative,
                                            extra=extra, version="v1.10.1"))
    assert parsed["Prompt"] == prompt and parsed["Negative prompt"] == negative
    assert parsed["Hires prompt"] == prompt
    assert parsed["Lora hashes"] == "a: 1, b: 2" and parsed["Note"] == 'say "hi"\nbye'
    assert (parsed["Steps"], parsed["CFG scale"]) == ("20", "7.5")
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "640")


def test_pure_prompt_when_last_line_has_few_params() -> None:
    parsed = parse_infotext_raw("just a prompt\nwith: two, lines: here")
    assert parsed == {"Prompt": "just a prompt\nwith: two, lines: here", "Negative prompt": ""}
    full = parse_infotext("just a prompt\nwith: two, lines: here")
    assert full["Prompt"] == "just a prompt\nwith: two, lines: here" and "with" not in full


def test_legacy_hypernet_and_first_pass_size() -> None:
    text = ("p\nSteps: 20, Size: 1024x768, First pass size: 0x0, Hypernet: anime, "
            "Hypernet strength: 0.5")
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "p<hypernet:anime:0.5>"
    # ~512*512 pixels, rounded up to multiples of 64: 1024x768 -> 591x443 -> 640x448.
    assert (parsed["Size-1"], parsed["Size-2"]) == (640, 448)
    assert (parsed["Hires resize-1"], parsed["Hires resize-2"]) == (1024, 768)


@pytest.mark.parametrize("version, sampler, prompt, expected", [
    ("v1.5.2", "DDIM", "[a:b:3]", {"Old prompt editing timelines", "Pad conds v0",
                                    "Downcast alphas_cumprod"}),
    ("v1.7.0-224-gdeadbee", "Euler", "a", {"Downcast alphas_cumprod"}),
    ("v1.7.0-225-gdeadbee", "Euler", "a", set()),
    ("v1.10.1", "DDIM", "[a]", set()),
    ("not a version", "DDIM", "[a]", set()),
])
def test_version_backcompat(version: str, sampler: str, prompt: str, expected: set) -> None:
    parsed = parse_infotext(f"{prompt}\nSteps: 20, Sampler: {sampler}, Seed: 1, Version: {version}")
    flags = {"Old prompt editing timelines", "Pad conds v0", "Downcast alphas_cumprod"}
    assert {key for key in flags if parsed.get(key) is True} == expected
    assert not parse_infotext(
        f"{prompt}\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.5.2",
        auto_backcompat=False).get("Pad conds v0")


def test_request_fields_mapping() -> None:
    fields = infotext_to_request_fields(parse_infotext(EXAMPLE_3))
    assert fields["steps"] == 25 and fields["cfg_scale"] == 6.5 and fields["seed"] == 3000000000
    assert (fields["width"], fields["height"]) == (512, 768)
    assert fields["subseed"] == 111 and fields["subseed_strength"] == 0.3
    assert fields["hr_scale"] == 2.0 and fields["hr_second_pass_steps"] == 10
    assert fields["enable_hr"] is True
    assert fields["negative_prompt"] == "easynegative, lowres"
    plain = infotext_to_request_fields(parse_infotext(EXAMPLE_1))
    assert plain["enable_hr"] is False and plain["scheduler"] == "Karras"


def test_request_fields_quirks() -> None:
    parsed = parse_infotext("p\nSteps: 20, Sampler: DPM++ 2M Karras, Seed resize from: 640x320")
    fields = infotext_to_request_fields(parsed)
    # Upstream maps the first number (the width) to seed_resize_from_h.
    assert (fields["seed_resize_from_h"], fields["seed_resize_from_w"]) == (640, 320)
    assert (fields["sampler_name"], fields["scheduler"]) == ("DPM++ 2M", "Karras")
    bad = infotext_to_request_fields(parse_infotext("p\nSteps: many, Seed: 1, CFG scale: 7"))
    assert "steps" not in bad and bad["seed"] == 1


def test_settings_overrides() -> None:
    parsed = parse_infotext("p\nSteps: 20, Clip skip: 2, ENSD: 31337, RNG: CPU, Eta: 0.67")
    overrides = infotext_to_settings_overrides(parsed)
    assert overrides["CLIP_stop_at_last_layers"] == 2
    assert overrides["eta_noise_seed_delta"] == 31337
    assert overrides["randn_source"] == "CPU" and overrides["eta_ancestral"] == 0.67
    current = {"CLIP_stop_at_last_layers": 2, "randn_source": "GPU"}
    only_changes = infotext_to_settings_overrides(parsed, current)
    assert "CLIP_stop_at_last_layers" not in only_changes
    assert only_changes["randn_source"] == "CPU"
