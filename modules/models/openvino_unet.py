"""The U-Net through OpenVINO's CPU runtime (`--cpu-backend openvino`).

Why: on a CPU, eager PyTorch is at par with diffusers and ~85 % of a step is already
inside oneDNN / MKL / SDPA kernels, so eager code has little left to take. OpenVINO
compiles the whole graph: fused convolutions with their bias / activation / residual
adds, fused GroupNorm and attention, weights repacked once for its kernels. Measured
(`bench/bench_cpu_backend.py`, docs/performance.md) it is the faster CPU path.

How, in three layers, each cached at its own cost:

1. **Template** (per architecture, on disk; `modules.models.openvino_template`): our own
   `UNetModel` traced once with every parameter as a graph *input* (its name as the
   input's name) and dynamic batch, latent size and token count, then saved as OpenVINO
   IR under the cache folder. Weights are not in it (a few MB), so one template serves
   every checkpoint of that architecture.
   The file name is a hash of the config, the U-Net source and the library versions, so
   a code change never loads a stale graph. Converting costs ~1 min for SD1.5 (once).
2. **Compiled model** (per set of *changing* layers, in memory): a clone of the template
   whose weight inputs are replaced by constants holding the checkpoint's tensors, except
   the layers a LoRA set changes (`modules.models.patcher` merges it), which stay runtime
   inputs. The constants share the tensors' memory (float32 and bf16 ones are not copied,
   and the plugin reads much of them in place: it adds ~0.4x the weights where copying
   them first added 1.4x), so the tensors are kept alive with the compiled model and are
   never written (the patcher writes copies). Compiling takes a few seconds for SD1.5 on
   2 cores. Shapes stay dynamic, so every image size, batch and prompt length runs on the
   same compiled model. A LoRA set is fed as inputs: switching to another set of the same
   layers (every kohya LoRA of a family changes the same ones) needs no compile, and a
   call without LoRA reuses that model with the checkpoint's tensors as inputs; only a set
   that changes a layer no cached model takes as an input compiles, and the model it
   compiles also takes the inputs of the one it replaces (sets of different layers, in
   turn, compile twice in all). Weights as inputs cost nothing measurable in a step. The
   last `compiled_limit` models are kept. With `int8_linears`, a linear fed as an input is
   not int8, so a model is reused only where its extra inputs are no linears.
3. **Call**: inputs shared with their tensors (no copies), the inference runs
   asynchronously so that a stop request (`cancel.check()`) is honoured while it runs
   (the request is cancelled, and its compiled model dropped: see `_cancel`).

ControlNet residuals are graph inputs as well (zeros when a call has none), so ControlNet
units keep the fast path. Everything that changes the computation inside the U-Net (guidance
patches, T2I / IP-Adapter, hypernetworks, ToMe, another attention kernel) runs on the eager
module: `eager_reason` names why, and results are the same either way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from modules.models.offload import free_memory
from modules.models.openvino_constants import input_tensor, weight_constant, weight_input
from modules.models.openvino_template import (
    PROBE,
    convert_template,
    record_control_shapes,
    template_hash,
)
from modules.nn.attention import AttentionBackend, AttentionLayer, check
from modules.nn.unet import ControlResiduals, UNetModel

log = logging.getLogger(__name__)

# Under the models folder: the saved templates (weight-less graphs, a few MB each).
CACHE_FOLDER = "openvino-cache"
# Seconds between stop-request checks while an inference runs.
_CANCEL_POLL_S = 0.05
# What the CPU plugin adds when compiling, as a share of the float32 weights (its repacked
# layouts; the rest is read in place): 0.40 measured for SD1.5, rounded up.
_PACKED_SHARE = 0.5
# What converting the template holds at its peak, the same way: 2.25 measured for SD1.5.
_CONVERT_SHARE = 2.5


def openvino_missing() -> str | None:
    """Why the OpenVINO backend cannot run here (None: it can)."""
    try:
        import openvino  # noqa: F401
    except ImportError as error:
        return f"the openvino package is not installed ({error})"
    return None


class _Compiled(NamedTuple):
    """One compiled model: the arrays its constants read (kept alive as long as it), and
    the weights it takes as inputs, in input order."""

    model: Any
    arrays: list[np.ndarray]
    inputs: tuple[str, ...]


class OpenVINOUNet:
    """Runs calls of one loaded `UNetModel` through OpenVINO (module docstring)."""

    def __init__(self, *, unet: UNetModel, cache_dir: Path, compiled_limit: int = 1,
                 int8_linears: bool = False) -> None:
        """:param unet: the loaded U-Net (its weights are read, never written)
        :param cache_dir: where templates are saved (`<models>/openvino-cache`)
        :param compiled_limit: compiled models kept in memory (each holds the
            repacked layouts of the weights it has as constants)
        :param int8_linears: keep the linear layers' weights as int8 (`--cpu-int8`,
            `openvino_constants.int8_weight`): a quarter of the memory, dequantised
            inside OpenVINO's kernels"""
        self.unet = unet
        self.int8_linears = int8_linears
        self.cache_dir = cache_dir
        self.compiled_limit = max(1, compiled_limit)
        self.names = [name for name, _ in unet.named_parameters()]
        stored = {str(p.dtype).removeprefix("torch.") for p in unet.parameters()
                  if p.dtype not in (torch.float32, torch.bfloat16, torch.float16)}
        # Low-bit storage (float8, GGUF) dequantises in its own layers: those run eagerly.
        self._storage_reason = f"weights stored as {', '.join(sorted(stored))}" if stored else None
        self.has_y = unet.config.adm_in_channels is not None
        self._template: Any = None
        self._control_shapes: list[tuple[int, int]] = []
        # Keyed by the weights each takes as inputs (empty: all constants).
        self._compiled: OrderedDict[frozenset[str], _Compiled] = OrderedDict()
        self._lock = threading.Lock()
        self.timings: dict[str, float] = {}
        # Why this model runs eagerly from now on (a failed conversion or compile), or None.
        self.disabled: str | None = None

    # --- when the fast path applies -------------------------------------------------
    def eager_reason(self, kwargs: Mapping[str, Any]) -> str | None:
        """Why a call with these keyword arguments must run eagerly (None: it need not)."""
        if self.disabled is not None:
            return self.disabled
        if kwargs.get("patches"):
            return "U-Net patches (guidance tools, T2I / IP-Adapter)"
        if kwargs.get("context_transform") is not None:
            return "a hypernetwork"
        if kwargs.get("token_merging", 0.0) > 0:
            return "token merging"
        if self._storage_reason is not None:
            return self._storage_reason
        if any(module.attention_backend not in (AttentionBackend.SDPA, AttentionBackend.XFORMERS)
               for module in self.unet.modules() if isinstance(module, AttentionLayer)):
            return "an attention kernel other than SDPA"
        return None

    # --- the call --------------------------------------------------------------------
    def __call__(self, weights: Mapping[str, Tensor], x: Tensor, timesteps: Tensor,
                 context: Tensor, y: Tensor | None = None, *, control=None,
                 cancel=None) -> Tensor:
        """The U-Net's output for these inputs, computed with `weights` (name -> tensor,
        replacing the module's: a LoRA set's merged copies)."""
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        if control is not None and not isinstance(control, ControlResiduals):
            control = control(x, timesteps, context, y, cancel=cancel)
        compiled = self.compiled(frozenset(weights))
        if compiled is None:  # could not be built: this call (and the next ones) run eagerly
            return self._eager(weights, x, timesteps, context, y, control, cancel)
        fixed = [x, timesteps, context, *([y] if self.has_y else [])]
        fixed += self._control_inputs(control, x)
        inputs = [input_tensor(value.float()) for value in fixed]  # the graph's are float32
        inputs += [input_tensor(self._weight(weights, name)) for name in compiled.inputs]
        check(cancel)
        # A request per call (reusing one measured no faster), which holds the inputs it
        # was given: they are shared, not copied, and live until it has ended.
        request = compiled.model.create_infer_request()
        request.start_async(inputs, share_inputs=True)
        try:
            while not request.wait_for(int(_CANCEL_POLL_S * 1000)):
                check(cancel)
        except BaseException:  # a stop request, or anything raised while it waited
            self._cancel(request, compiled)
            raise
        out = torch.from_numpy(request.get_output_tensor(0).data.copy())
        # A stop request that came while it ran still wins: the eager module checks
        # between its blocks, so a call that saw one never returns a result either.
        check(cancel)
        return out.to(x.dtype)

    def _cancel(self, request: Any, compiled: _Compiled) -> None:
        """Stop a running inference, wait until it has (a request freed while its inference
        runs crashes the process), and drop its compiled model: an inference cancelled
        half-way leaves the model's shape state stale, and the next call on it fails (both
        seen with OpenVINO 2026.4). The next call compiles again."""
        request.cancel()
        try:
            request.wait()
        except RuntimeError:  # how a cancelled inference ends
            pass
        with self._lock:
            for changed, entry in list(self._compiled.items()):
                if entry is compiled:
                    del self._compiled[changed]

    def _weight(self, weights: Mapping[str, Tensor], name: str) -> Tensor:
        """The tensor fed for a weight input, in the input's dtype (the checkpoint's)."""
        own = self.unet.get_parameter(name)
        return weights.get(name, own).detach().to(own.dtype)

    def _eager(self, weights, x, timesteps, context, y, control, cancel) -> Tensor:
        call_kwargs = {"control": control, "cancel": cancel}
        if not weights:
            return self.unet(x, timesteps, context, y, **call_kwargs)
        return torch.func.functional_call(self.unet, dict(weights), (x, timesteps, context, y),
                                          call_kwargs, strict=False)

    def _control_inputs(self, control: ControlResiduals | None, x: Tensor) -> list[Tensor]:
        """The residual inputs: the ControlNet's, or zeros (adding zero changes nothing)."""
        if control is not None:
            return [*control.down, control.middle]
        batch, _, height, width = x.shape
        config = self.unet.config
        # The middle block keeps the deepest map; its channels are the last level's.
        middle = (config.model_channels * config.channel_mult[-1], self._control_shapes[-1][1])
        # A stride-2 convolution with padding 1 halves a side rounding up.
        return [torch.zeros(batch, channels, -(-height // 2**halved), -(-width // 2**halved))
                for channels, halved in [*self._control_shapes, middle]]

    # --- building --------------------------------------------------------------------
    def compiled(self, changed: frozenset[str]) -> _Compiled | None:
        """A compiled model taking at least the `changed` weights as inputs: a cached one
        (the fewest inputs), else one built for them (LRU-kept); None when it cannot be
        built here (`disabled` says why, once, in the log)."""
        with self._lock:
            usable = [inputs for inputs in self._compiled if self._serves(inputs, changed)]
            if usable:
                inputs = min(usable, key=len)
                self._compiled.move_to_end(inputs)
                return self._compiled[inputs]
            # Drop the oldest first: two compiled copies of the weights may not fit. The
            # new model also takes the dropped ones' inputs, so that alternating between
            # LoRA sets of different layers compiles twice, not at every switch.
            while len(self._compiled) >= self.compiled_limit:
                dropped, _ = self._compiled.popitem(last=False)
                changed |= {name for name in dropped if not self._int8_name(name)}
            try:
                return self._build(changed)
            except Exception as error:  # noqa: BLE001 - any failure: eager is always right
                self.disabled = f"OpenVINO could not build this U-Net ({type(error).__name__}: " \
                                f"{error})"
                log.warning("%s; it runs on PyTorch instead", self.disabled)
                return None

    def _serves(self, inputs: frozenset[str], changed: frozenset[str]) -> bool:
        """Whether a model with these weight inputs computes a call changing `changed`
        as one built for it would: it must take them all, and with `int8_linears` no
        other linear (fed in full precision, it would not be int8 as it is otherwise)."""
        return changed <= inputs and not any(self._int8_name(n) for n in inputs - changed)

    def _int8_name(self, name: str) -> bool:
        return self._as_int8(name, self.unet.get_parameter(name))

    def _build(self, changed: frozenset[str]) -> _Compiled:
        """Compile with the `changed` weights as inputs, if the RAM holds what it adds."""
        template = self.template()  # read or converted first: not part of the compile's cost
        _require_memory(self._memory_needed(changed), "to compile its weights")
        start = time.perf_counter()
        inputs = tuple(name for name in self.names if name in changed)
        model, arrays = self._with_weights(template, inputs)
        import openvino as ov

        # As many threads as torch was given (cluster replicas pin it; --replica-threads).
        compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": self._precision(ov),
            "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        self.timings["compile_s"] = time.perf_counter() - start
        self.timings["compiles"] = self.timings.get("compiles", 0) + 1
        # The compiled model reads its constants in place: their arrays live as long as it.
        self._compiled[changed] = _Compiled(compiled, arrays, inputs)
        return self._compiled[changed]

    def _memory_needed(self, changed: frozenset[str]) -> int:
        """Bytes a compile with the `changed` weights as inputs adds, for its constants:
        copies of the weights that are not contiguous already (float32, bf16 and fp16 ones
        are shared as they are; int8 ones of the linears with `int8_linears`), and the
        plugin's own repacked layouts (`_PACKED_SHARE` of their float32 size)."""
        copies, total = 0, 0
        for name, tensor in self.unet.named_parameters():
            if name in changed:
                continue
            total += 4 * tensor.numel()
            if self._as_int8(name, tensor):
                copies += tensor.numel()
            elif not tensor.is_contiguous():
                copies += tensor.element_size() * tensor.numel()
            elif tensor.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                copies += 4 * tensor.numel()
        return copies + int(_PACKED_SHARE * total)

    def _as_int8(self, name: str, tensor: Tensor) -> bool:
        return self.int8_linears and tensor.ndim == 2 and name.endswith(".weight")

    def _precision(self, ov) -> str:
        """bf16 where the weights are bf16 and the CPU computes bf16 natively, else f32."""
        capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if self.unet.dtype == torch.bfloat16 and "BF16" in capabilities:
            return "bf16"
        return "f32"

    def _with_weights(self, template: Any, inputs: tuple[str, ...]
                      ) -> tuple[Any, list[np.ndarray]]:
        """A clone of the template whose weights are constants of the checkpoint's tensors,
        but `inputs`, which stay inputs (after the fixed ones, in this order); and the
        arrays the constants share (the caller keeps them alive as long as the model)."""
        model = template.clone()
        parameters = list(model.get_parameters())
        fixed = len(parameters) - len(self.names)
        arrays, kept = [], []
        for parameter, (name, tensor) in zip(parameters[fixed:], self.unet.named_parameters(),
                                             strict=True):
            if name in inputs:
                kept_input, node = weight_input(tensor)
                kept.append(kept_input)
            else:
                node, held = weight_constant(tensor.detach(), int8=self._as_int8(name, tensor))
                arrays += held
            parameter.output(0).replace(node.output(0))
        for parameter in parameters[fixed:]:
            model.remove_parameter(parameter)
        model.add_parameters(kept)
        model.validate_nodes_and_infer_types()
        return model, arrays

    def template(self) -> Any:
        """The architecture's weight-less graph: read from the cache folder, else converted."""
        if self._template is not None:
            return self._template
        import openvino as ov

        self._control_shapes = record_control_shapes(self.unet)
        path = self.cache_dir / f"unet-{template_hash(self.unet, ov)}.xml"
        start = time.perf_counter()
        if path.is_file():
            self._template = ov.Core().read_model(path)
        else:
            # A conversion that cannot fit would take the whole process down with it.
            float32_bytes = 4 * sum(p.numel() for p in self.unet.parameters())
            _require_memory(int(_CONVERT_SHARE * float32_bytes), "to convert the U-Net")
            log.info("OpenVINO: converting the U-Net graph (once per architecture, about a "
                     "minute for SD1.5 on 2 cores) into %s", path.parent)
            zeros = self._control_inputs(None, torch.zeros(1, 1, PROBE, PROBE))
            self._template = convert_template(self.unet, ov, zeros)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            # Per process and thread: cluster replicas may convert the same template at once.
            partial = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.partial.xml")
            ov.save_model(self._template, partial, compress_to_fp16=False)
            partial.with_suffix(".bin").replace(path.with_suffix(".bin"))
            partial.replace(path)  # the .xml last: a half-written pair is never read
        self.timings["template_s"] = time.perf_counter() - start
        return self._template


def _require_memory(needed: int, purpose: str) -> None:
    """MemoryError (the backend then steps aside) unless the RAM has `needed` bytes free."""
    available = free_memory(torch.device("cpu"))
    if needed > available:
        raise MemoryError(f"{needed / 2**20:.0f} MiB of RAM needed {purpose} next to the "
                          f"loaded model, {available / 2**20:.0f} MiB free")


def accelerator_factory(paths, *, int8_linears: bool = False
                        ) -> Callable[[UNetModel], OpenVINOUNet | None]:
    """What the model manager calls with each loaded U-Net (`--cpu-backend openvino`):
    templates go to `<models>/openvino-cache`; `int8_linears` is `--cpu-int8`."""
    def build(unet) -> OpenVINOUNet | None:
        # SD3 / Flux transformers are not U-Nets: they keep the eager path.
        return OpenVINOUNet(unet=unet, cache_dir=paths.models_dir / CACHE_FOLDER,
                            int8_linears=int8_linears) if isinstance(unet, UNetModel) else None
    return build
