"""spandrel upscalers for real: files of several architectures, loaded and run by spandrel.

Where spandrel cannot be imported by the app's torch (our CPU torch 2.13 build), it runs
in the worker of `.venv-upscalers` (built by `python3 launch.py`); where it can, the
worker is started with this very interpreter. Either way these tests run spandrel:
there is no skip. Files:

* an ESRGAN x4 file from random weights in the original "old" layout (`model.N`),
  written by our own code: spandrel must recognise it, enlarge by 4, give the same
  picture tiled and untiled, and agree with our RRDBNet on the same file;
* a SwinIR x2 (.safetensors) and a Real-ESRGAN Compact x4 (.pth in `params`), built
  by spandrel's own architecture classes in the upscaler interpreter, dropped into
  A1111's `SwinIR/` and `RealESRGAN/` folders, with spandrel's direct output as the
  reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.paths import ROOT, Paths
from modules.settings import Settings
from modules.upscaling import spandrel_models
from modules.upscaling.registry import (
    UpscaleModel,
    UpscalerError,
    UpscalerRegistry,
    upscaler_python,
)
from modules.upscaling.remote import RemoteModel, SpandrelWorker, WorkerError
from modules.upscaling.rrdbnet import RRDBConfig
from tests.test_upscalers import random_net, to_old

pytestmark = pytest.mark.slow  # a worker process imports torch and spandrel

WHOLE = Settings().with_overrides({"ESRGAN_tile": 0})
# Every published ESRGAN uses a growth of 32 channels, and spandrel reads no other
# value from the file; width and depth are small to stay fast.
ESRGAN = RRDBConfig(num_features=8, num_blocks=1, growth=32)


def spandrel_python() -> Path:
    found = upscaler_python(None)
    if found is not None:
        return found
    if spandrel_models.problem() is None:
        return Path(sys.executable)
    pytest.fail("no interpreter can import spandrel: `python3 launch.py --run-tests` builds "
                ".venv-upscalers (or install torchvision + spandrel matching this torch)")


def picture(size=(24, 20), seed=0) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 255, (*size[::-1], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def run_in(python: Path, *args: str) -> str:
    result = subprocess.run([str(python), *args], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                 "HF_HUB_OFFLINE": "1"}, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> tuple[Path, dict]:
    """A models/ folder with the three files; returns it and {name: spandrel arch}."""
    models = tmp_path_factory.mktemp("models")
    (models / "ESRGAN").mkdir()
    state = {k: v.clone() for k, v in random_net(ESRGAN).state_dict().items()}
    torch.save(to_old(state, ESRGAN), models / "ESRGAN" / "4x_old.pth")
    picture().save(models / "input.png")
    made = json.loads(run_in(spandrel_python(), "tests/helpers/spandrel_files.py",
                             str(models), str(models / "input.png")))
    return models, made


@pytest.fixture(scope="module")
def registry(models_dir):
    args = parse_args(["--models-dir", str(models_dir[0])])
    registry = UpscalerRegistry(folders=Paths.from_args(args).upscaler_dirs,
                                spandrel_python=spandrel_python())
    yield registry
    registry.close()


def remote(registry: UpscalerRegistry, name: str) -> RemoteModel | UpscaleModel:
    """The model as spandrel runs it (the worker, or in process where spandrel imports)."""
    path = next(p for p in registry.model_files() if p.stem == name)
    access = registry.spandrel()
    if access.in_process:
        from modules.upscaling.files import load_weights
        return spandrel_models.load_spandrel(load_weights(path), path, registry.device)
    return RemoteModel.load(access.worker, path)


def test_esrgan_file_through_spandrel_scales_tiles_and_matches_rrdbnet(registry):
    model = remote(registry, "4x_old")
    assert (model.arch, model.scale) == ("ESRGAN", 4)
    image = picture((40, 36), seed=1)
    whole = model.apply(image, tile=0, overlap=0)
    tiled = model.apply(image, tile=16, overlap=8)
    assert whole.size == tiled.size == (160, 144)
    difference = np.abs(pixels(tiled) - pixels(whole))
    assert difference.mean() < 2 and difference.max() < 26
    ours = registry.run_model(image, "4x_old", WHOLE)
    assert np.abs(pixels(ours) - pixels(whole)).max() <= 1


def test_spandrel_architectures_from_a1111_folders(registry, models_dir):
    folder, made = models_dir
    assert made == {"swinir_x2": "SwinIR", "compact_x4": "RealESRGAN Compact"}
    assert {"4x_old", "swinir_x2", "compact_x4"} <= set(registry.names())
    image = Image.open(folder / "input.png")
    for name, scale in (("swinir_x2", 2), ("compact_x4", 4)):
        model = registry.load(name)
        assert (model.arch, model.scale) == (made[name], scale)
        out = registry.run_model(image, name, WHOLE)
        assert out.size == (24 * scale, 20 * scale)
        expected = Image.open(folder / f"{name}.expected.png")
        assert np.abs(pixels(out) - pixels(expected)).max() <= 1, name
    tiled = registry.run_model(image, "compact_x4", Settings().with_overrides(
        {"ESRGAN_tile": 12, "ESRGAN_tile_overlap": 4}))
    assert np.abs(pixels(tiled) - pixels(out)).mean() < 2
    assert registry.upscale(image, 3.0, "swinir_x2", Settings()).size == (72, 56)  # // 8 * 8


def test_in_process_spandrel_where_it_imports(models_dir):
    """In an interpreter that imports spandrel, the registry uses it for every file."""
    folder, _ = models_dir
    script = (
        "import json, sys; from pathlib import Path; from modules.upscaling.registry import "
        "UpscalerRegistry\n"
        "r = UpscalerRegistry(folders=[Path(sys.argv[1]) / d for d in "
        "('ESRGAN', 'SwinIR', 'RealESRGAN')])\n"
        "print(json.dumps({n: [type(m).__name__, type(m.network).__name__, m.arch, m.scale] "
        "for n in ('4x_old', 'swinir_x2', 'compact_x4') for m in [r.load(n)]}))")
    loaded = json.loads(run_in(spandrel_python(), "-c", script, str(folder)))
    assert loaded == {
        "4x_old": ["UpscaleModel", "ImageModelDescriptor", "ESRGAN", 4],
        "swinir_x2": ["UpscaleModel", "ImageModelDescriptor", "SwinIR", 2],
        "compact_x4": ["UpscaleModel", "ImageModelDescriptor", "RealESRGAN Compact", 4]}


def test_files_spandrel_cannot_use_get_errors_naming_them(registry, models_dir):
    folder, _ = models_dir
    from safetensors.torch import save_file

    save_file({"some.other.weight": torch.zeros(3, 3)}, str(folder / "SwinIR" / "odd.safetensors"))
    (folder / "HAT").mkdir(exist_ok=True)
    (folder / "HAT" / "cut.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UpscalerError, match=r"odd\.safetensors.*(spandrel|architecture)"):
        registry.load("odd")
    with pytest.raises(UpscalerError, match=r"cut\.pth: cannot read"):
        registry.load("cut")
    assert registry.run_model(picture(), "compact_x4", WHOLE).size == (96, 80)


def test_a_dead_worker_is_started_again(models_dir):
    folder, _ = models_dir
    worker = SpandrelWorker(python=spandrel_python())
    try:
        model = RemoteModel.load(worker, folder / "SwinIR" / "swinir_x2.safetensors")
        first = model.apply(picture(), tile=0, overlap=0)
        os.kill(worker.pid, signal.SIGKILL)
        again = model.apply(picture(), tile=0, overlap=0)  # loads the file again
        assert first.tobytes() == again.tobytes() and first.size == (48, 40)
    finally:
        worker.close()


def test_a_missing_environment_is_named(models_dir):
    folder, _ = models_dir
    worker = SpandrelWorker(python=folder / "no-env" / "bin" / "python")
    with pytest.raises(WorkerError, match="no upscaler environment at .*no-env"):
        RemoteModel.load(worker, folder / "SwinIR" / "swinir_x2.safetensors")


def test_bootstrap_probe_tells_the_environments_apart():
    """The bootstrap keeps spandrel in the app's venv only where it imports there."""
    from modules.app import bootstrap_upscalers

    assert bootstrap_upscalers.probe(spandrel_python())
    assert bootstrap_upscalers.probe(Path(sys.executable)) == (spandrel_models.problem() is None)
