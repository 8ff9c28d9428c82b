"""The model manager: which checkpoints exist, which are loaded, and loading them safely.

Loading builds the network on the meta device (no memory, no random init), reads the
checkpoint tensor by tensor straight into the target dtype and device, and assigns
them by name. A failed load raises `ModelLoadError` naming the file and the reason and
leaves the models already loaded serving. Up to `sd_checkpoints_limit` models stay
cached (least recently used goes first). Callers get a `LoadedModel` and must not
modify it; per-request changes (LoRA, ...) go on clones.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from modules.conditioning.conditioner import Conditioner
from modules.conditioning.tokenizer import ClipTokenizer
from modules.models import flow_manager
from modules.models.checkpoints import (
    CheckpointInfo,
    find_checkpoint,
    hash_target,
    list_checkpoints,
)
from modules.models.errors import ModelLoadError
from modules.models.families import Family
from modules.models.hashes import HashCache, short_hash
from modules.models.loader import inspect_checkpoint, load_state_dict, load_vae_state_dict
from modules.models.offload import ComponentPlacer, MemoryMode
from modules.models.patcher import ModelPatcher
from modules.models.sd_model import StableDiffusionModel
from modules.models.storage_option import job_storage, store_unet
from modules.models.vae_select import resolve_vae
from modules.nn.attention import set_attention_upcast
from modules.nn.autoencoder import AutoencoderKL
from modules.sampling.denoiser import model_sigmas

log = logging.getLogger(__name__)

DEMO_MODEL_STEM = "easel-demo"


@dataclass
class LoadedModel:
    """A checkpoint in memory with what generation needs next to it."""

    info: CheckpointInfo
    family: Family
    model: StableDiffusionModel
    conditioner: Conditioner
    sigmas: torch.Tensor  # the model's ascending discrete sigma table
    sha256: str | None = None
    metadata: dict = field(default_factory=dict)
    # Per-request patches (LoRA) go on clones of this; it is never patched itself. Its
    # lock is the model's: every U-Net and text-encoder call, patched or not, takes it.
    patcher: ModelPatcher = None  # type: ignore[assignment]  # made from `model` when None
    # Which components sit on the device when (--medvram / --lowvram, models/offload.py).
    placer: ComponentPlacer | None = None

    # An external VAE chosen for a job (`with_vae`): the module, its file name, sha256.
    vae_override: AutoencoderKL | None = None
    vae_name: str | None = None
    vae_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.patcher is None:
            self.patcher = ModelPatcher(model=self.model)

    @property
    def vae(self) -> AutoencoderKL:
        return self.vae_override if self.vae_override is not None else self.model.vae

    def with_vae(self, vae: AutoencoderKL | None, name: str | None,
                 sha256: str | None) -> "LoadedModel":
        """A view of this model decoding with another VAE (patcher and caches shared)."""
        view = copy.copy(self)
        view.vae_override, view.vae_name, view.vae_sha256 = vae, name, sha256
        return view

    @property
    def shorthash(self) -> str | None:
        return short_hash(self.sha256)

    @property
    def title(self) -> str:
        return f"{self.info.name} [{self.shorthash}]" if self.sha256 else self.info.name


class ModelManager:
    """Lists, loads and caches checkpoints; thread-safe."""

    def __init__(self, *, paths, device: torch.device, dtype: torch.dtype,
                 vae_dtype: torch.dtype, hashing: bool = True, cache_limit: int = 1,
                 attention: str = "auto", vae_path: str | None = None,
                 cache_limit_source: Callable[[], int] | None = None,
                 memory_policy: Callable[[Family], MemoryMode] | None = None,
                 channels_last: bool = False, upcast_attention: bool = False,
                 compile_mode: str | None = None,
                 precision: Callable[[Family], tuple[torch.dtype, torch.dtype]] | None = None,
                 modules_source: Callable[[], list[str]] | None = None,
                 storage_source: Callable[[], str] | None = None,
                 unet_accelerator: Callable[[torch.nn.Module], object] | None = None) -> None:
        """
        :param cache_limit_source: read at every load for the number of checkpoints to keep
            (the `sd_checkpoints_limit` setting); `cache_limit` when not given
        :param memory_policy: the memory mode for a model family (models/offload.py)
        :param channels_last: run the U-Net and VAE on NHWC maps (modules/devices.py)
        :param upcast_attention: attention in float32 over half weights (--upcast-sampling)
        :param compile_mode: torch.compile the U-Net in this mode ("default",
            "reduce-overhead" = CUDA graphs); None: eager
        :param precision: (weights dtype, VAE dtype) per family (`devices.precision_policy`);
            `dtype` and `vae_dtype` for every family when not given
        :param modules_source: the `forge_additional_modules` setting (SD3 / Flux parts)
        :param storage_source: the `forge_unet_storage_dtype` setting (models/storage_option)
        :param unet_accelerator: builds the U-Net's fast path (`--cpu-backend openvino`)
        """
        self.paths, self.device, self.dtype, self.vae_dtype = paths, device, dtype, vae_dtype
        self.hashing, self.cache_limit = hashing, cache_limit
        self.cache_limit_source = cache_limit_source or (lambda: self.cache_limit)
        self.memory_policy = memory_policy or (lambda family: MemoryMode.NORMAL)
        self.precision = precision or (lambda family: (self.dtype, self.vae_dtype))
        self.modules_source = modules_source or list
        self.storage_source = storage_source or (lambda: "Automatic")
        self.job_modules: tuple[str, ...] | None = None  # one get()'s, under the lock
        self.job_storage: str | None = None  # likewise (models/storage_option.py)
        self.channels_last, self.upcast_attention = channels_last, upcast_attention
        self.compile_mode, self.unet_accelerator = compile_mode, unet_accelerator
        self.attention, self.vae_path = attention, vae_path
        self.loads_refused: str | None = None  # why this process never loads (cluster ingress)
        self._vaes: OrderedDict[tuple, AutoencoderKL] = OrderedDict()
        self.hash_cache = HashCache(path=paths.cache_file)
        self._tokenizer: ClipTokenizer | None = None
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._current: CheckpointInfo | None = None  # the default for jobs naming none
        self.startup_warnings: list[str] = []  # why the start-up model is not the first choice
        self._lock = threading.RLock()
        # Called with each newly loaded model (the extensions' model_loaded callbacks).
        self.on_loaded: list = []

    # ---- listing ------------------------------------------------------------------------

    def checkpoints(self) -> list[CheckpointInfo]:
        return list_checkpoints(self.paths.checkpoint_dirs, cache=self.hash_cache)

    def find(self, query: str) -> CheckpointInfo:
        found = find_checkpoint(query, self.checkpoints())
        if found is None:
            raise ModelLoadError(query, "no such checkpoint in " + ", ".join(
                str(d) for d in self.paths.checkpoint_dirs))
        return found

    def default_checkpoint(self) -> CheckpointInfo:
        """The first checkpoint that is not the demo model, else the demo model."""
        listed = self.checkpoints()
        if not listed:
            raise ModelLoadError(str(self.paths.checkpoint_dirs[-1]), "no checkpoints found")
        real = [info for info in listed if info.stem != DEMO_MODEL_STEM]
        return (real or listed)[0]

    # ---- loading ------------------------------------------------------------------------

    @property
    def current(self) -> LoadedModel | None:
        """The default model if it is in memory (an override may have evicted it)."""
        with self._lock:
            return self._loaded.get(self._current.path) if self._current else None

    @property
    def current_info(self) -> CheckpointInfo | None:
        with self._lock:
            return self._current

    def load_initial(self, setting: str = "", ckpt_flag: str | None = None) -> LoadedModel:
        """The start-up model: `--ckpt`, else the setting's, else the first that is not the
        demo; when that cannot be loaded, the next in listing order, the demo model last
        (A1111 falls back too). Each failure is logged and kept in `startup_warnings`."""
        self.startup_warnings = []
        errors: list[ModelLoadError] = []
        for info in self.initial_candidates(setting, ckpt_flag):
            try:
                loaded = self.select(info)
            except ModelLoadError as error:
                errors.append(error)
                self.startup_warnings.append(f"{info.name} could not be loaded: {error.reason}")
                log.warning("Checkpoint %s could not be loaded, trying the next: %s",
                            info.path, error.reason)
                continue
            return loaded
        if errors:
            raise errors[0]
        raise ModelLoadError(str(self.paths.checkpoint_dirs[-1]), "no checkpoints found")

    def initial_candidates(self, setting: str, ckpt_flag: str | None) -> list[CheckpointInfo]:
        listed = self.checkpoints()
        first: list[CheckpointInfo] = []
        if ckpt_flag:
            first = [self.info_for_path(Path(ckpt_flag))]
        elif setting:
            found = find_checkpoint(setting, listed)
            if found is None:
                self.startup_warnings.append(f"checkpoint {setting!r} (the setting) not found")
            first = [found] if found is not None else []
        real = [info for info in listed if info.stem != DEMO_MODEL_STEM]
        demo = [info for info in listed if info.stem == DEMO_MODEL_STEM]
        return first + [info for info in real + demo if info.path not in
                        {tried.path for tried in first}]

    def info_for_path(self, path: Path) -> CheckpointInfo:
        from modules.models.hashes import legacy_model_hash

        return CheckpointInfo(path=str(path.resolve()), name=path.name,
                              legacy_hash=legacy_model_hash(hash_target(path)))

    def get(self, query: str | None = None, modules: list[str] | None = None,
            storage: str | None = None) -> LoadedModel:
        """The model for one job: `query` (title/name/hash) or the current model; `modules`,
        `storage`: the job's `forge_additional_modules`, `forge_unet_storage_dtype` (None: the
        settings'). Getting a model by name does not change later jobs' default model."""
        with self._lock, flow_manager.job_modules(self, modules), job_storage(self, storage):
            if not query:
                current = self.current
                if current is not None and not flow_manager.stale(self, current):
                    return current
                if self._current is not None:  # evicted by a per-job model: reload it
                    return self._ensure(self._current)
                return self.load_initial()
            return self._ensure(self.find(query))

    def select(self, info: CheckpointInfo) -> LoadedModel:
        """Load `info` and make it the default for jobs that name no checkpoint."""
        with self._lock:
            loaded = self._ensure(info)
            self._current = info
            return loaded

    def with_vae(self, loaded: LoadedModel, setting: str) -> LoadedModel:
        """`loaded` decoding with the VAE the `sd_vae` setting (or --vae-path) picks."""
        path = resolve_vae(setting, checkpoint_path=loaded.info.path, vae_dir=self.paths.vae_dir,
                           checkpoint_dirs=self.paths.checkpoint_dirs, vae_path=self.vae_path)
        if path is None:
            return loaded
        with self._lock:
            placer = loaded.placer
            if placer is not None and placer.mode is MemoryMode.NORMAL:
                placer = None
            # --medvram / --lowvram: each model gets its own copy, placed by its placer (it
            # rests in RAM and comes to the device for the VAE phase, like the model's own).
            key = (str(path.resolve()), loaded.family.vae, loaded.info.path if placer else None)
            if key not in self._vaes:
                device = torch.device("cpu") if placer else self.device  # RAM until used
                self._vaes[key] = self._load_vae(path, loaded.family, device)
                while len(self._vaes) > 2:
                    self._forget_vae(self._vaes.popitem(last=False)[0])
            self._vaes.move_to_end(key)
            if placer is not None:
                placer.attach(f"vae:{key[0]}", self._vaes[key])
            sha256 = self.hash_cache.sha256(hash_target(path)) if self.hashing else None
            return loaded.with_vae(self._vaes[key], path.name, sha256)

    def _forget_vae(self, key: tuple) -> None:
        """A VAE left the cache: the placer of the model it was loaded for lets it go."""
        owner = self._loaded.get(key[2]) if key[2] is not None else None
        if owner is not None and owner.placer is not None:
            owner.placer.detach(f"vae:{key[0]}")

    def _load_vae(self, path: Path, family: Family, device: torch.device) -> AutoencoderKL:
        state = load_vae_state_dict(path, dtype=self.precision(family)[1], device=device)
        with torch.device("meta"):
            vae = AutoencoderKL(config=family.vae)
        result = vae.load_state_dict(state, strict=False, assign=True)
        if result.missing_keys or any(t.is_meta for t in vae.parameters()):
            raise ModelLoadError(str(path), f"VAE does not fit {family.label}: missing "
                                            f"{result.missing_keys[:3]}")
        vae.set_attention_backend(self.attention)
        vae.set_channels_last(self.channels_last)
        set_attention_upcast(vae, self.upcast_attention)
        return vae.eval().requires_grad_(False)

    def unload(self) -> None:
        with self._lock:
            for loaded in self._loaded.values():
                self._evict(loaded)
            self._loaded.clear()
            self._current = None

    def _ensure(self, info: CheckpointInfo) -> LoadedModel:
        cached = self._loaded.get(info.path)
        if cached is not None and not flow_manager.stale(self, cached):
            self._loaded.move_to_end(info.path)
            loaded = cached
        else:
            loaded = self._load_reported(info)  # a failed load leaves the others serving
            if cached is not None:
                self._evict(cached)  # its separate parts changed (flow_manager.stale)
            self._loaded[info.path] = loaded
            for listener in self.on_loaded:
                listener(loaded)
        # The limit is read each time, so lowering the setting takes effect at the next job.
        while len(self._loaded) > max(self.cache_limit_source(), 1):
            self._evict(self._loaded.popitem(last=False)[1])
        return self._activate(loaded)

    def _activate(self, loaded: LoadedModel) -> LoadedModel:
        """On a GPU, cached models other than `loaded` rest in RAM (A1111's checkpoint cache)."""
        if self.device.type != "cpu":
            for other in self._loaded.values():
                if other is not loaded and other.placer is not None:
                    other.placer.offload_all()
            if loaded.placer is not None:
                loaded.placer.restore()
        return loaded

    def _evict(self, loaded: LoadedModel) -> None:
        if loaded.placer is not None:
            loaded.placer.remove()
        for key in [key for key in self._vaes if key[2] == loaded.info.path]:
            del self._vaes[key]  # its own copy of an external VAE (--medvram / --lowvram)

    def _load_reported(self, info: CheckpointInfo) -> LoadedModel:
        """`_load`, any failure but running out of memory a `ModelLoadError` naming the file."""
        if self.loads_refused:
            raise ModelLoadError(info.name, self.loads_refused)
        try:
            return self._load(info)
        except (ModelLoadError, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as error:  # a damaged or unexpected file: named, never a crash
            raise ModelLoadError(info.path, f"cannot be loaded ({type(error).__name__}: "
                                            f"{error})") from error

    def _load(self, info: CheckpointInfo) -> LoadedModel:
        log.info("Loading %s", info.path)
        plan = flow_manager.plan_for(self, info)  # SD3 / SD3.5 / Flux.1; None for the others
        if plan is not None:
            return flow_manager.load_flow(self, info, plan)
        header, family = inspect_checkpoint(info.path)
        mode = self.memory_policy(family)
        # Straight into the target dtype, and onto the device unless the mode keeps it in RAM.
        load_device = self.device if mode is MemoryMode.NORMAL else torch.device("cpu")
        dtype, vae_dtype = self.precision(family)
        model = build_model(family, load_state_dict(info.path, dtype=dtype, device=load_device),
                            path=info.path)  # the state dict is freed once assigned
        storage = store_unet(self, model.unet, dtype)  # forge_unet_storage_dtype
        model.vae.to(vae_dtype)
        for part in (model.unet, model.vae):
            part.set_attention_backend(self.attention)
            part.set_channels_last(self.channels_last)
        set_attention_upcast(model, self.upcast_attention)
        model.eval().requires_grad_(False)
        if self.compile_mode is not None:
            # In place (nn.Module.compile): the module keeps its names, hooks and patcher.
            model.unet.compile(mode=self.compile_mode, dynamic=False)
        placer = ComponentPlacer(components={"text_encoders": model.text_encoders,
                                             "unet": model.unet, "vae": model.vae},
                                 device=self.device, mode=mode)
        sha256 = self.hash_cache.sha256(info.hash_target) if self.hashing else None
        info = replace(info, sha256=sha256) if sha256 else info
        # The conditioner calls the encoders through the patcher: it holds the model's lock.
        patcher = ModelPatcher(model=model, accelerator=self.unet_accelerator and
                               self.unet_accelerator(model.unet))
        encoders = [patcher.text_encoder(spec.name) for spec in family.text_encoders]
        return LoadedModel(
            info=info, family=family, model=model, sigmas=model_sigmas(
                family.schedule, zero_terminal_snr=family.zero_terminal_snr),
            conditioner=Conditioner(encoders=encoders, tokenizer=self.tokenizer(),
                                    family=family),
            sha256=sha256, metadata={**header.metadata, **storage}, placer=placer, patcher=patcher,
        )

    def tokenizer(self) -> ClipTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = ClipTokenizer()
            return self._tokenizer


def build_model(family: Family, state: dict[str, torch.Tensor], *,
                path: str) -> StableDiffusionModel:
    """Build on the meta device and assign the checkpoint's tensors by name."""
    with torch.device("meta"):
        model = StableDiffusionModel(family=family)
    report = model.load_ldm_state_dict(state)
    if report.missing:
        raise ModelLoadError(path,
                             f"{len(report.missing)} weights missing, e.g. {report.missing[:3]}")
    if report.unexpected:
        log.info("%s: ignored %d unused keys, e.g. %s", path, len(report.unexpected),
                 report.unexpected[:3])
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
                    if t.is_meta]
    if left_on_meta:
        raise ModelLoadError(path, f"weights not filled: {left_on_meta[:3]}")
    return model
