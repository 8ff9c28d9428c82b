"""A loaded model's shared parts under concurrent jobs (issue #17, item 14).

- Every text-encoder call holds the model's lock (the patcher's), with or without a
  text-encoder LoRA: a LoRA job swaps the encoder's parameters for the length of its
  call (functional_call), so a plain call running beside it could read LoRA weights.
- Under --medvram / --lowvram an external VAE (`sd_vae`) is placed like the model's own:
  it rests on the offload device between jobs and comes to the device only for the VAE
  phase, sending the U-Net away.
"""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import save_file

from modules.models.offload import MemoryMode
from modules.networks.activate import NetworkRegistry, activate_networks
from modules.nn.autoencoder import AutoencoderKL
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.api_runtime import make_runtime
from tests.helpers.checkpoints import finish
from tests.tiny import TINY_SD15

OFFLOAD = torch.device("meta")  # a stand-in offload target the recorder can tell apart


def held_elsewhere(lock) -> bool:
    """Whether some thread holds `lock`, probed from a new thread."""
    answer: list[bool] = []

    def probe() -> None:
        acquired = lock.acquire(blocking=False)
        if acquired:
            lock.release()
        answer.append(not acquired)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return answer[0]


class LockWitness:
    """Forward pre-hooks on the text encoders noting whether the model's lock is held."""

    def __init__(self, loaded):
        self.lock = loaded.patcher.unet().lock  # the lock all calls on this model share
        self.seen: list[bool] = []
        self.handles = [encoder.register_forward_pre_hook(self.note)
                        for encoder in loaded.model.text_encoders.values()]

    def note(self, module, args) -> None:
        self.seen.append(held_elsewhere(self.lock))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("locking"))
    yield rt
    rt.jobs.stop()


def generate(runtime, **fields):
    params = Txt2ImgParams(**{"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 1,
                              "do_not_save_samples": True, **fields})
    return finish(txt2img(runtime, params))[0]


def test_the_shared_conditioner_encodes_under_the_model_lock(runtime):
    loaded = runtime.models.get()
    registry = NetworkRegistry.for_paths(runtime.paths, runtime.models.hash_cache)
    witness = LockWitness(loaded)
    try:
        networks = activate_networks(registry, loaded, ["a plain prompt"], [""])
        assert networks.conditioner is loaded.conditioner  # no LoRA: the shared one
        networks.conditioner.encode_batch(["a plain prompt"], steps=2)
        generate(runtime, prompt="a whole job without networks")
    finally:
        witness.close()
    assert witness.seen and all(witness.seen)


class Recorder:
    """A mover noting where each module was sent ("device" or "offload"); moves nothing."""

    def __init__(self):
        self.location: dict[int, str] = {}

    def __call__(self, module, device) -> None:
        self.location[id(module)] = "offload" if device == OFFLOAD else "device"


@pytest.fixture(scope="module")
def medvram(tmp_path_factory):
    data = tmp_path_factory.mktemp("medvram")
    rt = make_runtime(data, "--medvram")
    torch.manual_seed(3)
    vae = AutoencoderKL(config=TINY_SD15.vae)
    (data / "models" / "VAE").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()},
              str(data / "models" / "VAE" / "other.safetensors"))
    yield rt
    rt.jobs.stop()


def test_medvram_places_an_external_vae_like_the_models_own(medvram):
    loaded = medvram.models.get()
    placer = loaded.placer
    assert placer.mode is MemoryMode.MEDVRAM
    recorder = Recorder()
    placer.mover, placer.offload_device = recorder, OFFLOAD  # this test's model: recorded
    generate(medvram, override_settings={"sd_vae": "other.safetensors"})
    external = medvram.models.with_vae(loaded, "other.safetensors").vae
    assert external is not loaded.model.vae
    where = recorder.location
    assert where[id(external)] == "device"  # decoded last, on the device
    assert where[id(loaded.model.unet)] == "offload"  # sent away for the VAE phase
    assert id(loaded.model.vae) not in where  # the model's own VAE was not used
    generate(medvram)  # a job with the model's own VAE
    assert where[id(external)] == "offload"  # the external VAE rests between jobs
    assert where[id(loaded.model.vae)] == "device"
