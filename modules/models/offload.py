"""Memory modes: which parts of a loaded model sit on the compute device, and when.

A1111's flags, as its users know them:

* normal: every component (text encoders, U-Net, VAE) lives on the device.
* `--medvram`: components live in RAM; the one in use is moved to the device when it is
  called, and whichever component held the device before goes back to RAM. Generation
  runs text encoder -> U-Net -> VAE, so each moves about once per job.
  `--medvram-sdxl` does the same for SDXL models only.
* `--lowvram`: as medvram, and the U-Net is streamed: each of its top-level blocks
  (`time_embed`, `input_blocks.N`, `middle_block`, `output_blocks.N`, `out`) is moved
  to the device just before it runs and back right after, so only one block's weights
  (the largest SD1.5 block is ~0.1 GB in fp16) occupy the device at a time.

Flow models (SD3.x, Flux.1) are placed the same way: "unet" is their transformer, whose
top-level callables are its embedders, its blocks (MMDiT `joint_blocks.N`, Flux
`double_blocks.N` and `single_blocks.N`) and its final layer. T5-XXL (~9.5 GB in fp16)
is a `cpu_capable` encoder: under `--lowvram`, and under `--medvram` when the device has
less free memory than T5's weights take, it stays in RAM and runs on the CPU, and only its
output (a few MB of hidden states) is moved to the device, as Forge does; CLIP encoders
follow the group's rules.

The moves are made by forward pre-hooks (PyTorch's documented extension point, the same
one A1111 uses), registered per loaded model by a `ComponentPlacer` that the
`LoadedModel` owns; nothing global is touched and the hooks are removed with the
placer. Entry points are covered so that any caller works: the U-Net's forward; the
text encoder's forward and token embedding (textual inversion reads the embedding
before the forward); every VAE layer (the tiled VAE calls the decoder's layers one by
one). Code that creates inputs asks `execution_device(module)` where they must go.

On a CPU-only machine the device is the RAM, so these modes change nothing but the
bookkeeping; their effect on GPU memory is measured by `bench/bench_gpu.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from enum import Enum

import torch
from torch import nn

from modules.devices import EXECUTION_DEVICE_ATTR, memory_stats


class MemoryMode(str, Enum):
    """How much of a model stays on the compute device."""

    NORMAL = "normal"
    MEDVRAM = "medvram"
    LOWVRAM = "lowvram"


def memory_mode(args, *, is_sdxl: bool) -> MemoryMode:
    """The mode A1111's flags ask for (`--medvram-sdxl` only for SDXL-family models)."""
    if getattr(args, "lowvram", False):
        return MemoryMode.LOWVRAM
    if getattr(args, "medvram", False) or (getattr(args, "medvram_sdxl", False) and is_sdxl):
        return MemoryMode.MEDVRAM
    return MemoryMode.NORMAL


Mover = Callable[[nn.Module, torch.device], None]
FreeMemory = Callable[[torch.device], int]


def free_memory(device: torch.device) -> int:
    """Free bytes on `device` (CUDA: the driver's count; the CPU: available RAM)."""
    return int(memory_stats(device)["free"])


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def move_module(module: nn.Module, device: torch.device) -> None:
    """Move the parameters and buffers of `module` (plain synchronous copies: a component
    moves about once per job, so pinned-memory overlap would buy little)."""
    module.to(device)


class ComponentPlacer:
    """Keeps at most one component (or, in lowvram, one U-Net block) on the device.

    :param components: name -> module, e.g. {"unet": ..., "vae": ..., "text_encoders": ...}
        (a ModuleDict of encoders is one group); "unet" is streamed block by block in
        lowvram mode
    :param device: the compute device
    :param offload_device: where resting components live (the CPU's RAM)
    :param mode: see `MemoryMode`; NORMAL registers nothing
    :param mover: how a module is moved (tests pass a recording mover)
    :param cpu_capable: names in the "text_encoders" ModuleDict (flow models: "t5xxl") that
        run on the CPU, only their output moving to the device: always in lowvram, in
        medvram when `free_memory(device)` at construction is below their size
    :param free_memory: free bytes of a device (tests pass a stand-in)
    """

    def __init__(self, *, components: dict[str, nn.Module], device: torch.device,
                 offload_device: torch.device = torch.device("cpu"),
                 mode: MemoryMode = MemoryMode.NORMAL, mover: Mover = move_module,
                 cpu_capable: Collection[str] = (),
                 free_memory: FreeMemory = free_memory) -> None:
        self.components = components
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.mode = mode
        self.mover = mover
        self.resident: str | None = None  # the component now on the device
        self._handles: list = []
        self._attached: dict[str, list] = {}  # attached component -> its hook handles
        # Encoders that compute on the CPU (see `cpu_capable`), by name.
        self.cpu_encoders: dict[str, nn.Module] = {}
        if mode is not MemoryMode.NORMAL:
            self.cpu_encoders = self._choose_cpu_encoders(cpu_capable, free_memory)
            self._install()

    # ---- setup --------------------------------------------------------------------------

    def _choose_cpu_encoders(self, names: Collection[str],
                             free: FreeMemory) -> dict[str, nn.Module]:
        group = self.components.get("text_encoders")
        if not isinstance(group, nn.ModuleDict):
            return {}
        present = [name for name in names if name in group]
        if self.mode is MemoryMode.MEDVRAM and present:
            room = free(self.device)
            present = [name for name in present if room < module_bytes(group[name])]
        return {name: group[name] for name in present}

    def _install(self) -> None:
        on_cpu = {id(m) for encoder in self.cpu_encoders.values() for m in encoder.modules()}
        for name, module in self.components.items():
            setattr(module, EXECUTION_DEVICE_ATTR, self.device)
            if name == "unet" and self.mode is MemoryMode.LOWVRAM:
                self._stream_blocks(module)
                continue
            for entry in _entry_points(name, module):
                if id(entry) not in on_cpu:
                    self._handles.append(entry.register_forward_pre_hook(self._bring(name)))
        for encoder in self.cpu_encoders.values():
            setattr(encoder, EXECUTION_DEVICE_ATTR, self.offload_device)
            self._handles.append(encoder.register_forward_hook(self._output_to_device))

    def _output_to_device(self, module: nn.Module, args: tuple, output):
        """A CPU-kept encoder's hidden states go to the device the transformer runs on."""
        return output.to(self.device) if isinstance(output, torch.Tensor) else None

    def _bring(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            self.use(name)
        return hook

    def _stream_blocks(self, unet: nn.Module) -> None:
        """lowvram: each top-level U-Net block comes to the device only while it runs."""
        for block in streamed_blocks(unet):
            self._handles.append(block.register_forward_pre_hook(self._block_in))
            self._handles.append(block.register_forward_hook(self._block_out))

    def _block_in(self, block: nn.Module, args: tuple) -> None:
        self.use("unet")  # puts the other components away; the U-Net itself stays in RAM
        self.mover(block, self.device)

    def _block_out(self, block: nn.Module, args: tuple, output) -> None:
        self.mover(block, self.offload_device)

    def attach(self, name: str, vae: nn.Module) -> None:
        """Place an external VAE like the model's own: it rests on the offload device and
        comes to the device when called, sending the previous component away."""
        if self.mode is MemoryMode.NORMAL or name in self._attached:
            return
        self.components[name] = vae
        setattr(vae, EXECUTION_DEVICE_ATTR, self.device)
        self.mover(vae, self.offload_device)
        self._attached[name] = [entry.register_forward_pre_hook(self._bring(name))
                                for entry in _entry_points("vae", vae)]

    def detach(self, name: str) -> None:
        """Forget an attached VAE (dropped from the VAE cache): hooks off, back to RAM."""
        for handle in self._attached.pop(name, []):
            handle.remove()
        vae = self.components.pop(name, None)
        if vae is not None:
            self.mover(vae, self.offload_device)
        if self.resident == name:
            self.resident = None

    def remove(self) -> None:
        """Drop the hooks (the model is being unloaded)."""
        for handle in self._handles + [h for hs in self._attached.values() for h in hs]:
            handle.remove()
        self._handles.clear()
        self._attached.clear()

    # ---- placement ----------------------------------------------------------------------

    def use(self, name: str) -> None:
        """Make `name` the component on the device, putting the previous one away.

        The pipeline calls this before a phase whose calls may swap parameters
        (LoRA's functional_call), so that the hooks find the component in place.
        """
        if self.mode is MemoryMode.NORMAL or self.resident == name:
            return
        if self.resident is not None:
            self._move(self.resident, self.offload_device)
        streamed = name == "unet" and self.mode is MemoryMode.LOWVRAM
        if not streamed:
            self._move(name, self.device)
        self.resident = name

    def _move(self, name: str, device: torch.device) -> None:
        """Move a component; the encoders kept on the CPU stay where they are."""
        module = self.components[name]
        if name != "text_encoders" or not self.cpu_encoders:
            self.mover(module, device)
            return
        for key, encoder in module.items():
            if key not in self.cpu_encoders:
                self.mover(encoder, device)

    def offload_all(self) -> None:
        """Everything to RAM (a model kept in the checkpoint cache but not in use)."""
        for module in self.components.values():
            self.mover(module, self.offload_device)
        self.resident = None

    def restore(self) -> None:
        """Back to the mode's resting state after `offload_all` (normal: all on the device)."""
        if self.mode is MemoryMode.NORMAL:
            for module in self.components.values():
                self.mover(module, self.device)


def streamed_blocks(unet: nn.Module) -> list[nn.Module]:
    """The U-Net's top-level callables: its children, with the block lists opened up."""
    blocks: list[nn.Module] = []
    for child in unet.children():
        blocks.extend(child if isinstance(child, nn.ModuleList) else [child])
    return blocks


def _entry_points(name: str, module: nn.Module) -> Iterable[nn.Module]:
    """The modules whose call means `name` is about to compute (see the module docstring)."""
    if name == "unet":
        return [module]
    if name == "vae":
        return [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    # Text encoders: one group (SDXL's two encoders alternate per prompt chunk).
    encoders = list(module.children()) if isinstance(module, nn.ModuleDict) else [module]
    entries = []
    for encoder in encoders:
        setattr(encoder, EXECUTION_DEVICE_ATTR, getattr(module, EXECUTION_DEVICE_ATTR))
        token_embedding = getattr(encoder, "token_embedding", None)
        entries += [encoder] + ([token_embedding] if isinstance(token_embedding, nn.Module)
                                else [])
    return entries
