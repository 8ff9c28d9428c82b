"""Read-only listings: samplers, schedulers, upscalers, models, networks, styles, scripts.

Shapes are A1111's (a1111.md b.2, b.4). Lists of things Easel cannot run yet (face
restorers, RealESRGAN models, scripts) are empty rather than invented. Files are
listed by walking their own folder only; nothing here builds a path from a request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from modules.models.errors import ModelLoadError
from modules.models.safetensors_io import read_safetensors_header
from modules.paths import NETWORK_SUFFIXES, VAE_SUFFIXES
from modules.sampling import registry as R
from modules.styles import load_styles

LATENT_UPSCALE_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)",
                        "Latent (bicubic antialiased)", "Latent (nearest)",
                        "Latent (nearest-exact)")
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under `folder` (recursive, hidden folders skipped), sorted by relative name."""
    if not folder.is_dir():
        return []
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [Path(directory) / f for f in files if f.lower().endswith(suffixes)]
    return sorted(found, key=lambda path: str(path.relative_to(folder)).lower())


def sampler_item(spec: R.SamplerSpec) -> dict[str, Any]:
    options = {}
    if spec.default_scheduler:
        options["scheduler"] = spec.default_scheduler
    for flag in ("second_order", "uses_ensd", "brownian_noise", "discard_next_to_last_sigma"):
        if getattr(spec, flag):
            options[flag] = "True"
    return {"name": spec.label, "aliases": list(spec.aliases), "options": options}


def scheduler_item(spec: R.SchedulerSpec) -> dict[str, Any]:
    return {"name": spec.name, "label": spec.label, "aliases": list(spec.aliases) or None,
            "default_rho": spec.default_rho, "need_inner_model": spec.need_model_sigmas}


def safetensors_metadata(path: Path) -> dict[str, Any]:
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        return dict(read_safetensors_header(path).metadata)
    except (ModelLoadError, OSError, ValueError):
        return {}


class ListingRoutes:
    def __init__(self, runtime) -> None:
        self.runtime = runtime

    def register(self, router: APIRouter) -> None:
        for path, handler in (
            ("samplers", self.samplers), ("schedulers", self.schedulers),
            ("upscalers", self.upscalers), ("latent-upscale-modes", self.latent_upscale_modes),
            ("sd-models", self.sd_models), ("sd-vae", self.sd_vae),
            ("hypernetworks", self.hypernetworks), ("face-restorers", self.empty_list),
            ("realesrgan-models", self.empty_list), ("prompt-styles", self.prompt_styles),
            ("embeddings", self.embeddings), ("loras", self.loras), ("scripts", self.scripts),
            ("script-info", self.empty_list), ("extensions", self.extensions),
        ):
            router.add_api_route(f"/sdapi/v1/{path}", handler, methods=["GET"])
        for path in ("refresh-vae", "refresh-embeddings", "refresh-loras"):
            router.add_api_route(f"/sdapi/v1/{path}", self.refresh, methods=["POST"])

    def samplers(self) -> list[dict[str, Any]]:
        return [sampler_item(spec) for spec in R.SAMPLERS]

    def schedulers(self) -> list[dict[str, Any]]:
        return [scheduler_item(spec) for spec in R.SCHEDULERS]

    def upscalers(self) -> list[dict[str, Any]]:
        return [{"name": name, "model_name": None, "model_path": None, "model_url": None,
                 "scale": 4} for name in BUILTIN_UPSCALERS]

    def latent_upscale_modes(self) -> list[dict[str, str]]:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    def sd_models(self) -> list[dict[str, Any]]:
        items = []
        for info in self.runtime.models.checkpoints():
            config = Path(info.path).with_suffix(".yaml")
            items.append({"title": info.title, "model_name": info.model_name,
                          "hash": info.shorthash, "sha256": info.sha256, "filename": info.path,
                          "config": str(config) if config.is_file() else None})
        return items

    def sd_vae(self) -> list[dict[str, str]]:
        folder = self.runtime.paths.vae_dir
        return [{"model_name": path.name, "filename": str(path)}
                for path in list_files(folder, VAE_SUFFIXES)]

    def hypernetworks(self) -> list[dict[str, str]]:
        folder = self.runtime.paths.hypernetwork_dir
        return [{"name": path.stem, "path": str(path)}
                for path in list_files(folder, (".pt", ".safetensors"))]

    def empty_list(self) -> list:
        return []

    def prompt_styles(self) -> list[dict[str, str]]:
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in load_styles(self.runtime.paths.styles_file)]

    def embeddings(self) -> dict[str, dict]:
        # Embedding files are not loaded by the pipeline yet, so none is reported loaded.
        return {"loaded": {}, "skipped": {}}

    def loras(self) -> list[dict[str, Any]]:
        folder = self.runtime.paths.lora_dir
        return [{"name": path.stem, "alias": path.stem, "path": str(path),
                 "metadata": safetensors_metadata(path)}
                for path in list_files(folder, NETWORK_SUFFIXES)]

    def scripts(self) -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    def extensions(self) -> list[dict[str, Any]]:
        items = []
        for root in self.runtime.paths.extensions_dirs:
            if not Path(root).is_dir():
                continue
            for entry in sorted(Path(root).iterdir()):
                if entry.is_dir() and not entry.name.startswith("."):
                    items.append({"name": entry.name, "remote": None, "branch": None,
                                  "commit_hash": None, "version": None, "commit_date": None,
                                  "enabled": True})
        return items

    def refresh(self) -> None:
        return None
