"""Device, precision and attention choices from A1111's flags."""

from __future__ import annotations

import torch

from modules import devices
from modules.app.cmd_args import parse_args
from modules.nn.attention import AttentionBackend, AttentionLayer
from tests.helpers.checkpoints import tiny_runtime
from tests.tiny import TINY_SD15


def test_attention_flags_map_to_backends():
    assert devices.attention_backend(parse_args([])) == "auto"
    assert devices.attention_backend(parse_args(["--opt-sub-quad-attention"])) == "sliced"
    assert devices.attention_backend(parse_args(["--opt-split-attention"])) == "sliced"
    assert devices.attention_backend(parse_args(["--opt-sdp-attention"])) == "sdpa"
    # xformers is not installed here: the flag falls back to SDPA as A1111 does.
    assert devices.attention_backend(parse_args(["--xformers"])) == "sdpa"


def test_cpu_keeps_fp32_and_flags_choose_cpu():
    args = parse_args(["--use-cpu", "all"])
    assert devices.choose_device(args) == torch.device("cpu")
    assert devices.choose_dtype(args, torch.device("cpu")) == torch.float32
    assert devices.choose_dtype(parse_args(["--no-half"]), torch.device("cuda")) == torch.float32
    assert devices.choose_dtype(parse_args([]), torch.device("cuda")) == torch.float16
    assert devices.choose_vae_dtype(parse_args(["--no-half-vae"]),
                                    torch.device("cuda")) == torch.float32


def test_loaded_model_uses_the_flagged_backend(tmp_path):
    runtime = tiny_runtime(tmp_path, {"tiny": TINY_SD15})
    runtime.models.attention = devices.attention_backend(parse_args(["--opt-sub-quad-attention"]))
    loaded = runtime.models.get()
    layers = [m for m in loaded.model.unet.modules() if isinstance(m, AttentionLayer)]
    assert layers and all(m.attention_backend is AttentionBackend.SLICED for m in layers)


CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_cpu_backend_default_is_openvino_on_a_cpu_when_installed_and_says_so(monkeypatch):
    monkeypatch.delenv("COMMANDLINE_ARGS", raising=False)  # conftest pins eager for the suite
    installed, missing = (lambda: None), (lambda: "the openvino package is not installed")
    backend, line = devices.cpu_backend(parse_args([]), CPU, installed)
    assert backend == "openvino" and "default" in line and "--cpu-backend eager" in line
    backend, line = devices.cpu_backend(parse_args([]), CPU, missing)
    assert backend == "eager" and "not installed" in line and "launch.py" in line
    for asked in ("eager", "inductor"):
        assert devices.cpu_backend(parse_args(["--cpu-backend", asked]), CPU, installed)[0] == asked
    assert devices.compile_mode(parse_args(["--cpu-backend", "inductor"]), CPU)[0] == "default"
    assert devices.compile_mode(parse_args(["--cpu-backend", "openvino"]), CPU)[0] is None


def test_cpu_backend_does_not_apply_to_a_gpu_and_an_explicit_choice_is_named(monkeypatch):
    monkeypatch.delenv("COMMANDLINE_ARGS", raising=False)
    backend, line = devices.cpu_backend(parse_args(["--cpu-backend", "openvino"]), CUDA,
                                        lambda: None)
    assert backend == "eager" and "--cpu-backend openvino is for CPUs" in line
    assert devices.cpu_backend(parse_args([]), CUDA, lambda: None)[0] == "eager"


def test_cpu_int8_is_named_where_it_applies_and_where_it_does_not():
    args = parse_args(["--cpu-int8"])
    assert "int8" in devices.cpu_backend(args, CPU, lambda: None)[1]
    for device, missing in ((CPU, lambda: "not installed"), (CUDA, lambda: None)):
        assert "--cpu-int8 applies to the OpenVINO backend only" in devices.cpu_backend(
            args, device, missing)[1]
