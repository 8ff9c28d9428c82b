"""Where models, outputs and state files live, resolved once from the command line.

A1111's layout under `--data-dir` (default: the install folder): `models/<kind>/`,
`outputs/`, `config.json`, `styles.csv`, `extensions/`. Single folders can be moved
with `--ckpt-dir`, `--lora-dir`, ... as in A1111. The shipped demo checkpoint's folder
(`SHIPPED_CHECKPOINTS`) stays listed whatever the data folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The demo checkpoint ships with the code, not with the user's data: listed under any
# --data-dir / --models-dir too (after the data's own folders), so the box is never empty.
SHIPPED_CHECKPOINTS = ROOT / "models" / "Stable-diffusion"

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
NETWORK_SUFFIXES = (".safetensors", ".ckpt", ".pt")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True, kw_only=True)
class Paths:
    """All folders Easel reads from or writes to."""

    data_dir: Path
    models_dir: Path
    checkpoint_dirs: tuple[Path, ...]
    vae_dir: Path
    # Separate text encoders of SD3 / Flux (clip_l, clip_g, t5xxl): Forge's folder, then A1111's
    text_encoder_dirs: tuple[Path, ...]
    lora_dir: Path
    embeddings_dir: Path
    hypernetwork_dir: Path
    controlnet_dir: Path
    # Where control models are listed from: `controlnet_dir`, then the folder A1111's
    # ControlNet extension kept its models in (`extensions/sd-webui-controlnet/models`
    # under the data folder), read when it exists, so a migrated A1111 folder works.
    controlnet_dirs: tuple[Path, ...]
    # CLIP image encoders for IP-Adapter / the style T2I-Adapter: A1111's and Forge's
    # `models/clip_vision` (neither has a flag for it)
    clip_vision_dir: Path
    esrgan_dir: Path
    facexlib_dir: Path  # facexlib's face detector file (RetinaFace), as A1111 keeps it
    upscaler_dirs: tuple[Path, ...]  # esrgan_dir first, then A1111's other upscaler folders
    extensions_dirs: tuple[Path, ...]
    config_file: Path
    styles_file: Path
    cache_file: Path

    @staticmethod
    def from_args(args) -> "Paths":
        data = Path(args.data_dir or ROOT).resolve()
        models = Path(args.models_dir).resolve() if args.models_dir else data / "models"
        ckpt_dirs = [models / "Stable-diffusion"]
        if args.ckpt_dir:
            ckpt_dirs.insert(0, Path(args.ckpt_dir).resolve())
        if SHIPPED_CHECKPOINTS not in ckpt_dirs:  # the code folder is the data folder: once
            ckpt_dirs.append(SHIPPED_CHECKPOINTS)
        return Paths(
            data_dir=data,
            models_dir=models,
            checkpoint_dirs=tuple(ckpt_dirs),
            vae_dir=_pick(args.vae_dir, models / "VAE"),
            text_encoder_dirs=(_pick(getattr(args, "text_encoder_dir", None),
                                     models / "text_encoder"), models / "CLIP"),
            lora_dir=_pick(args.lora_dir, models / "Lora"),
            embeddings_dir=_pick(args.embeddings_dir, models / "embeddings"),
            hypernetwork_dir=_pick(args.hypernetwork_dir, models / "hypernetworks"),
            controlnet_dir=_pick(args.controlnet_dir, models / "ControlNet"),
            controlnet_dirs=(_pick(args.controlnet_dir, models / "ControlNet"),
                             data / "extensions" / "sd-webui-controlnet" / "models"),
            clip_vision_dir=models / "clip_vision",
            esrgan_dir=_pick(args.esrgan_models_path, models / "ESRGAN"),
            facexlib_dir=models / "facexlib",
            upscaler_dirs=_upscaler_dirs(args, models),
            extensions_dirs=(ROOT / "extensions", data / "extensions")
            if data != ROOT else (ROOT / "extensions",),
            config_file=_pick(args.ui_settings_file, data / "config.json"),
            styles_file=_pick(args.styles_file, data / "styles.csv"),
            cache_file=data / "cache.json",
        )

    def output_dir(self, relative: str) -> Path:
        """An output folder from a setting such as `outputs/txt2img-images`."""
        path = Path(relative)
        return path if path.is_absolute() else self.data_dir / path


# A1111's upscaler folders under models/ and the flags that move them; spandrel (or our
# RRDBNet for ESRGAN) loads whatever architecture a file in any of them holds.
UPSCALER_FOLDERS = (("esrgan_models_path", "ESRGAN"), ("realesrgan_models_path", "RealESRGAN"),
                    ("swinir_models_path", "SwinIR"), ("dat_models_path", "DAT"),
                    ("hat_models_path", "HAT"), ("scunet_models_path", "ScuNET"),
                    ("bsrgan_models_path", "BSRGAN"))


def _upscaler_dirs(args, models: Path) -> tuple[Path, ...]:
    return tuple(_pick(getattr(args, flag, None), models / name)
                 for flag, name in UPSCALER_FOLDERS)


def _pick(flag: str | None, default: Path) -> Path:
    return Path(flag).resolve() if flag else default


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def serves_only_locally(args) -> bool:
    """True when only this machine can reach the server: no `--listen`, `--share`,
    `--subpath` (a proxy in front) or `--allowed-hosts` (names it is reached by), and no
    `--server-name` other than a loopback name. Training's `data_root` and installing
    extensions both ask this one question."""
    name = (getattr(args, "server_name", None) or "").strip().lower().strip("[]")
    exposed = (getattr(args, "listen", False) or getattr(args, "share", False)
               or getattr(args, "subpath", None) or getattr(args, "allowed_hosts", None))
    return not exposed and (not name or name in LOOPBACK_NAMES)


def login_configured(args) -> bool:
    """Any login (`--api-auth`, `--gradio-auth`, `--gradio-auth-path`) protects the app."""
    return any(getattr(args, flag, None) for flag in ("api_auth", "gradio_auth",
                                                       "gradio_auth_path"))


def inside(folder: Path, candidate: Path) -> bool:
    """True when `candidate` (after resolving links) lies inside `folder`."""
    try:
        candidate.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
