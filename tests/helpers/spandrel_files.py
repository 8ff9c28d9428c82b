"""Write upscaler files built by spandrel's own architecture classes (random weights).

    <python with spandrel> tests/helpers/spandrel_files.py OUT_DIR INPUT.png

Runs in an interpreter that can import spandrel (the upscaler environment, or the
app's venv where torchvision works). For each model it writes the file into the
folder A1111 would use (`SwinIR/`, `RealESRGAN/`) and `<name>.expected.png`: the
model's output on INPUT.png computed directly through spandrel's descriptor, the
reference the app's result must equal. Prints one JSON line: {name: arch}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _tiny_swinir() -> torch.nn.Module:
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                  mlp_ratio=2.0, upscale=2, upsampler="pixelshuffle", resi_connection="1conv")


def _tiny_compact() -> torch.nn.Module:
    from spandrel.architectures.Compact import Compact  # Real-ESRGAN's SRVGGNetCompact

    return Compact(num_feat=8, num_conv=2, upscale=4, act_type="prelu")


def _expected(state: dict, image: Image.Image) -> tuple[str, Image.Image]:
    import spandrel

    descriptor = spandrel.ModelLoader().load_from_state_dict(state).eval()
    x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    y = descriptor(x)[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    return descriptor.architecture.name, Image.fromarray(y.numpy())


def main(out: Path, source: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    image = Image.open(source).convert("RGB")
    made = {}
    for folder, name, network in (("SwinIR", "swinir_x2", _tiny_swinir()),
                                  ("RealESRGAN", "compact_x4", _tiny_compact())):
        state = {k: v.contiguous() for k, v in network.state_dict().items()}
        (out / folder).mkdir(parents=True, exist_ok=True)
        if folder == "SwinIR":
            save_file(state, str(out / folder / f"{name}.safetensors"))
        else:
            torch.save({"params": state}, out / folder / f"{name}.pth")
        made[name], expected = _expected(state, image)
        expected.save(out / f"{name}.expected.png")
    print(json.dumps(made))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
