"""Read-only listings: samplers, schedulers, upscalers, models, networks, styles, scripts.

Shapes are A1111's (docs/a1111-semantics.md, "Endpoints"). Lists of things Easel cannot run
yet (face restorers) are empty rather than invented; Real-ESRGAN models are the files present.
Files are listed by walking their own folder only; nothing here builds a path from a request.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException

from modules.models.errors import ModelLoadError
from modules.models.flow_parts import list_parts, module_folders
from modules.models.safetensors_io import read_safetensors_header
from modules.models.vae_select import list_vaes
from modules.paths import UPSCALER_FOLDERS
from modules.sampling import registry as R
from modules.styles import load_styles

LATENT_UPSCALE_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)",
                        "Latent (bicubic antialiased)", "Latent (nearest)",
                        "Latent (nearest-exact)")
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
READY_WAIT_S = 30.0  # how long a model-dependent listing waits for the start-up load
RETRY_AFTER_S = 5
REALESRGAN_FOLDER = [flag for flag, _ in UPSCALER_FOLDERS].index("realesrgan_models_path")
REALESRGAN_NAME = re.compile(r"(real-?esrgan|realesr-|r-esrgan)", re.IGNORECASE)


def _scale_from_name(info) -> float | None:
    """Built-ins report 4 (as before); model files their "4x"/"x2"-style name, if any."""
    if info.path is None:
        return 4
    match = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", info.name.lower())
    return float(match.group(1) or match.group(2)) if match else None


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


def wait_for_first_load(runtime) -> None:
    """Return once the start-up model load has ended; a 503 with Retry-After when it
    takes longer than READY_WAIT_S (A1111 serves nothing until its model is loaded)."""
    if not runtime.ready.wait(READY_WAIT_S):
        raise HTTPException(503, "the first checkpoint is still loading; retry shortly",
                            headers={"Retry-After": str(RETRY_AFTER_S)})


class ListingRoutes:
    def __init__(self, runtime) -> None:
        self.runtime = runtime

    def register(self, router: APIRouter) -> None:
        for path, handler in (
            ("samplers", self.samplers), ("schedulers", self.schedulers),
            ("upscalers", self.upscalers), ("latent-upscale-modes", self.latent_upscale_modes),
            ("sd-models", self.sd_models), ("sd-vae", self.sd_vae), ("sd-modules", self.sd_modules),
            ("hypernetworks", self.hypernetworks), ("face-restorers", self.face_restorers),
            ("realesrgan-models", self.realesrgan_models), ("prompt-styles", self.prompt_styles),
            ("embeddings", self.embeddings), ("loras", self.loras), ("scripts", self.scripts),
            ("script-info", self.script_info), ("extensions", self.extensions),
        ):
            router.add_api_route(f"/sdapi/v1/{path}", handler, methods=["GET"])
        router.add_api_route("/sdapi/v1/refresh-vae", self.refresh, methods=["POST"])
        for path in ("refresh-embeddings", "refresh-loras"):
            router.add_api_route(f"/sdapi/v1/{path}", self.refresh_networks, methods=["POST"])

    def samplers(self) -> list[dict[str, Any]]:
        return [sampler_item(spec) for spec in R.SAMPLERS]

    def schedulers(self) -> list[dict[str, Any]]:
        return [scheduler_item(spec) for spec in R.SCHEDULERS]

    def face_restorers(self) -> list[dict[str, Any]]:
        """A1111's `[{name, cmd_dir}]`: the restorers whose files are installed."""
        from modules.upscaling.face_registry import face_restorers_of

        return [{"name": info.name, "cmd_dir": info.cmd_dir}
                for info in face_restorers_of(self.runtime).list()]

    def upscalers(self) -> list[dict[str, Any]]:
        from modules.upscaling.registry import upscalers_of

        return [{"name": info.name, "model_name": None if info.path is None else info.name,
                 "model_path": info.path, "model_url": None, "scale": _scale_from_name(info)}
                for info in upscalers_of(self.runtime).list()]

    def realesrgan_models(self) -> list[dict[str, Any]]:
        """A1111's `[{name, path, scale}]` over the Real-ESRGAN files that are here (the
        RealESRGAN folder's, and files named like Real-ESRGAN's releases in the other
        upscaler folders), named as `/upscalers` and `hr_upscaler` name them."""
        from modules.upscaling.registry import upscalers_of

        folder = self.runtime.paths.upscaler_dirs[REALESRGAN_FOLDER]
        items = []
        for info in upscalers_of(self.runtime).list():
            if info.path is None:
                continue
            path = Path(info.path)
            if path.is_relative_to(folder) or REALESRGAN_NAME.match(path.stem):
                items.append({"name": info.name, "path": info.path,
                              "scale": _scale_from_name(info) or 4})  # its releases: 4x but x2
        return items

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
        paths = self.runtime.paths
        return [{"model_name": path.name, "filename": str(path)}
                for path in list_vaes(paths.vae_dir, paths.checkpoint_dirs)]

    def sd_modules(self) -> list[dict[str, str]]:
        """Forge's list of separate VAE / text encoder files (`forge_additional_modules`):
        those whose header shows a flow-model part."""
        return [{"model_name": part.path.name, "filename": str(part.path)}
                for part in list_parts(module_folders(self.runtime.paths))]

    def hypernetworks(self) -> list[dict[str, str]]:
        """A1111's `[{name, path}]`: the `.pt` files of the hypernetwork folder."""
        return [{"name": entry.name, "path": str(entry.path)}
                for entry in self._networks().hypernetworks.list()]

    def empty_list(self) -> list:
        return []

    def prompt_styles(self) -> list[dict[str, str]]:
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in load_styles(self.runtime.paths.styles_file)]

    def _networks(self):
        from modules.networks.activate import NetworkRegistry

        return self.runtime.networks or NetworkRegistry.for_paths(
            self.runtime.paths, self.runtime.models.hash_cache)

    def embeddings(self) -> dict[str, dict]:
        """A1111's shape, fitted against the current model: answered once the first load
        ended (waiting up to READY_WAIT_S, then 503 + Retry-After); with no model loaded
        after it, every file is listed as skipped with the reason."""
        from modules.networks.activate import encoder_widths

        wait_for_first_load(self.runtime)
        loaded = self.runtime.models.current
        if loaded is None:
            return {"loaded": {}, "skipped": {
                path.stem: {"error": "no checkpoint is loaded"}
                for path, _, _ in self._networks().embeddings.scan()}}
        found = self._networks().embeddings.for_model(encoder_widths(loaded),
                                                      loaded.conditioner.tokenizer.encode)
        skipped = {name: (entry.describe() if entry else {"error": reason})
                   for name, (entry, reason) in found.skipped.items()}
        return {"loaded": {name: e.describe() for name, e in found.loaded.items()},
                "skipped": skipped}

    def loras(self) -> list[dict[str, Any]]:
        return [{"name": entry.name, "alias": entry.alias, "path": str(entry.path),
                 "metadata": entry.metadata} for entry in self._networks().loras.list()]

    def refresh_networks(self) -> None:
        networks = self._networks()
        networks.loras.refresh()
        networks.embeddings.refresh()
        networks.hypernetworks.refresh()

    def scripts(self) -> dict[str, list[str]]:
        """Selectable script titles (lower case, as A1111) per tab."""
        registry = self.runtime.extensions
        if registry is None:
            return {"txt2img": [], "img2img": []}
        return {tab: [s.title().lower() for s in registry.selectable(tab == "img2img")]
                for tab in ("txt2img", "img2img")}

    def script_info(self) -> list[dict[str, Any]]:
        from modules.scripts.args import describe_args

        registry = self.runtime.extensions
        if registry is None:
            return []
        items = []
        for is_img2img in (False, True):
            for script in registry.selectable(is_img2img) + registry.alwayson(is_img2img):
                items.append({"name": script.title().lower(),
                              "is_alwayson": script.is_alwayson(is_img2img),
                              "is_img2img": is_img2img, "args": describe_args(script.Args)})
        return items

    def extensions(self) -> list[dict[str, Any]]:
        """A1111's items, plus `builtin` and `errors` (import/hook failures)."""
        registry = self.runtime.extensions
        return registry.describe() if registry is not None else []

    def refresh(self) -> None:
        return None
