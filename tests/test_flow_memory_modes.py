"""`--medvram` / `--lowvram` for SD3.5 and Flux models (tiny, random, loaded from files).

As in test_memory_precision.py, the placement runs with a recording mover: it records
which part would move where, in which order. `GPU` stands for the compute device: a CPU
device with an index, so that records tell it from the RAM (`cpu`) while every tensor sent
there stays usable on this machine; `META` shows where a T5 output lands. Results under
each mode are compared with the normal mode's on the CPU (bitwise: the same kernels run).
"""

from __future__ import annotations

import pytest
import torch

from modules.app.cmd_args import parse_args
from modules.devices import execution_device
from modules.models.flow_loader import plan_flow_checkpoint
from modules.models.flow_model import FlowModel, assemble_flow_model
from modules.models.offload import ComponentPlacer, MemoryMode, module_bytes, streamed_blocks
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from tests.helpers.checkpoints import finish
from tests.helpers.flow_files import PIPELINE_VAE, random_parts, write_all_in_one

GPU, CPU, META = torch.device("cpu", 1), torch.device("cpu"), torch.device("meta")
ARCHITECTURES = ("sd3", "flux")
PLENTY = 1 << 40  # free bytes: room for every part
CLIP_IDS = torch.tensor([[49406] + [320] * 75 + [49407]])
T5_IDS = torch.tensor([[3, 7, 1, 0, 0]])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flow-memory")
    return {arch: write_all_in_one(folder / f"{arch}.safetensors", random_parts(arch, seed=5),
                                   vae_prefix="vae." if arch == "flux" else "first_stage_model.")
            for arch in ARCHITECTURES}


def load(files, arch: str) -> FlowModel:
    """A fresh model each time: a placer leaves its device marks on the modules."""
    plan = plan_flow_checkpoint(files[arch], folders=(), module_names=())
    return assemble_flow_model(plan, dtype=torch.float32, vae_dtype=torch.float32)


def block_names(unet: torch.nn.Module) -> list[str]:
    """Names of `streamed_blocks(unet)`, in its order: "x_embedder", "joint_blocks.0", ..."""
    names = []
    for name, child in unet.named_children():
        is_list = isinstance(child, torch.nn.ModuleList)
        names += [f"{name}.{i}" for i in range(len(child))] if is_list else [name]
    return names


class Recorder:
    """A mover that records (part, device) and the most transformer blocks on the device."""

    def __init__(self, model: FlowModel):
        unet = model.unet
        self.blocks = dict(zip(map(id, streamed_blocks(unet)), block_names(unet), strict=True))
        self.names = {id(model.text_encoders): "text_encoders", id(unet): "unet",
                      id(model.vae): "vae", **self.blocks}
        self.names |= {id(encoder): name for name, encoder in model.text_encoders.items()}
        self.moves: list[tuple[str, str]] = []
        self.on_device: set[str] = set()
        self.most_blocks = 0

    def __call__(self, module: torch.nn.Module, device: torch.device) -> None:
        name = self.names.get(id(module), "?")
        self.moves.append((name, str(device)))
        (self.on_device.add if device == GPU else self.on_device.discard)(name)
        blocks = self.on_device & set(self.blocks.values())
        self.most_blocks = max(self.most_blocks, len(blocks))


def placer(model: FlowModel, mode: MemoryMode, *, device=GPU, mover=None,
           free=lambda device: PLENTY) -> ComponentPlacer:
    """The placer `load_flow` builds, with a stand-in mover and free-memory reading."""
    components = {"text_encoders": model.text_encoders, "unet": model.unet, "vae": model.vae}
    extra = {} if mover is None else {"mover": mover}
    return ComponentPlacer(components=components, device=device, mode=mode,
                           cpu_capable=("t5xxl",), free_memory=free, **extra)


def run_job(model: FlowModel) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP encoders -> T5 -> transformer (two steps) -> VAE decode, as a generation does;
    returns (T5 states, image)."""
    encoders, flux = model.text_encoders, model.family.architecture == "flux"
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        pooled = torch.cat([encoder(CLIP_IDS).pooled for name, encoder in encoders.items()
                            if name != "t5xxl"], dim=-1)
        context = encoders["t5xxl"](T5_IDS)
        for t in (0.9, 0.4):
            if flux:
                velocity = model.unet(x, torch.tensor([t]), context, pooled, guidance=3.5)
            else:
                velocity = model.unet(x, torch.tensor([t * 1000]), context, pooled)
            x = x - 0.5 * velocity
        return context, model.vae.decode(x)


def clips(model: FlowModel) -> list[str]:
    return [name for name in model.text_encoders if name != "t5xxl"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_medvram_moves_each_part_to_the_device_in_its_phase(files, arch):
    model = load(files, arch)
    recorder = Recorder(model)
    placed = placer(model, MemoryMode.MEDVRAM, mover=recorder)
    run_job(model)
    assert placed.cpu_encoders == {}  # room for T5: it moves with the CLIP encoders
    assert recorder.moves == [("text_encoders", "cpu:1"), ("text_encoders", "cpu"),
                              ("unet", "cpu:1"), ("unet", "cpu"), ("vae", "cpu:1")]
    assert execution_device(model.text_encoders["t5xxl"]) == GPU


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_medvram_keeps_t5_on_the_cpu_when_the_device_has_less_free_memory(files, arch):
    model = load(files, arch)
    t5 = model.text_encoders["t5xxl"]
    asked: list[torch.device] = []
    recorder = Recorder(model)
    placed = placer(model, MemoryMode.MEDVRAM, mover=recorder,
                    free=lambda device: asked.append(device) or module_bytes(t5) - 1)
    context, _ = run_job(model)
    assert asked == [GPU] and placed.cpu_encoders == {"t5xxl": t5}
    assert recorder.moves == ([(name, "cpu:1") for name in clips(model)]
                              + [(name, "cpu") for name in clips(model)]
                              + [("unet", "cpu:1"), ("unet", "cpu"), ("vae", "cpu:1")])
    assert execution_device(t5) == CPU and execution_device(model.text_encoders["clip_l"]) == GPU


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lowvram_streams_the_transformer_one_block_at_a_time(files, arch):
    model = load(files, arch)
    recorder = Recorder(model)
    placer(model, MemoryMode.LOWVRAM, mover=recorder)
    run_job(model)
    names = block_names(model.unet)
    stacks = ("joint_blocks.0", "joint_blocks.1") if arch == "sd3" else (
        "double_blocks.0", "single_blocks.0")
    assert set(stacks) < set(names) and "final_layer" in names
    assert recorder.most_blocks == 1  # peak device memory: about one block
    for name in names:  # each block in and straight out again, once per step
        assert recorder.moves.count((name, "cpu:1")) == 2, name
        assert recorder.moves.count((name, "cpu")) == 2, name
    assert ("unet", "cpu:1") not in recorder.moves  # never the whole transformer
    assert not {"t5xxl", "text_encoders"} & {name for name, _ in recorder.moves}
    assert recorder.on_device == {"vae"}


def test_lowvram_runs_t5_on_the_cpu_and_hands_its_output_to_the_device(files):
    model = load(files, "flux")
    recorder = Recorder(model)
    placed = placer(model, MemoryMode.LOWVRAM, device=META, mover=recorder)
    t5 = model.text_encoders["t5xxl"]
    assert placed.cpu_encoders == {"t5xxl": t5}  # whatever the free memory
    placed.use("text_encoders")
    with torch.inference_mode():
        hidden = t5(T5_IDS)  # computed in RAM (the recorder moved nothing)
    assert hidden.device == META and hidden.shape == (1, 5, 64)
    assert recorder.moves == [("clip_l", "meta")]
    assert execution_device(t5) == CPU and execution_device(model.unet) == META


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode", [MemoryMode.MEDVRAM, MemoryMode.LOWVRAM])
def test_memory_modes_give_the_normal_result(files, arch, mode):
    model = load(files, arch)
    expected_context, expected = run_job(model)
    # Real moves, T5 kept on the CPU: its output still reaches the transformer.
    placed = placer(model, mode, device=CPU, free=lambda device: 0)
    assert list(placed.cpu_encoders) == ["t5xxl"]
    context, image = run_job(model)
    assert torch.equal(context, expected_context) and torch.equal(image, expected)


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    data = tmp_path_factory.mktemp("flow-lowvram")
    checkpoints = data / "models" / "Stable-diffusion"
    for arch in ARCHITECTURES:
        write_all_in_one(checkpoints / f"{arch}-tiny.safetensors",
                         random_parts(arch, seed=7, vae=PIPELINE_VAE),
                         vae_prefix="vae." if arch == "flux" else "first_stage_model.")
    created = {flag: Runtime.create(parse_args(["--data-dir", str(data), "--nowebui",
                                                *([flag] if flag else [])]))
               for flag in ("", "--lowvram")}
    for runtime in created.values():
        runtime.ready.set()
    yield created
    for runtime in created.values():
        runtime.jobs.stop()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_txt2img_under_lowvram_gives_the_normal_image(runtimes, arch):
    params = Txt2ImgParams(prompt="a cat", negative_prompt="", width=64, height=64, steps=2,
                           seed=3, do_not_save_samples=True,
                           override_settings={"sd_model_checkpoint": f"{arch}-tiny"})
    images = {flag: finish(txt2img(runtime, params))[0].images[0]
              for flag, runtime in runtimes.items()}
    assert images[""].tobytes() == images["--lowvram"].tobytes()
    placed = runtimes["--lowvram"].models.get(f"{arch}-tiny").placer
    assert placed.mode is MemoryMode.LOWVRAM and list(placed.cpu_encoders) == ["t5xxl"]
