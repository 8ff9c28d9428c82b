"""Seamless tiling: a per-job view of a network whose convolutions pad circularly.

A1111's "Tiling" option makes the picture wrap around (its right edge continues its left
edge, its bottom its top) by giving every `Conv2d` of the U-Net and the VAE circular
padding. A1111 flips `padding_mode` on the loaded model; here another job may be using
that model at the same moment, so the job gets a *view* instead:

- `circular_view(module)` shallow-copies every module of the tree that holds a `Conv2d`
  somewhere below it. Each copy has its own `__dict__` and its own `_modules` dict (so
  its children can be the copied ones), while `_parameters` and `_buffers` are the
  original dicts: every weight is the same tensor object, nothing is copied, device moves
  (`--medvram`) are seen by both, and LoRA's `functional_call` finds the same names.
- The copied convolutions get `padding_mode="circular"`; subtrees without convolutions
  are not copied at all. The loaded model is never written.

The view lives as long as the job holds it; nothing is cached at module level.
"""

from __future__ import annotations

import copy

from torch import nn


def circular_view(module: nn.Module) -> nn.Module:
    """`module` with circular padding in every padded `Conv2d`; weights shared.

    Returns `module` itself when no convolution needs a change (nothing to wrap).
    """
    if isinstance(module, nn.Conv2d):
        if not _pads(module) or module.padding_mode == "circular":
            return module
        view = copy.copy(module)
        view.padding_mode = "circular"
        return view
    children = {name: circular_view(child) if child is not None else None
                for name, child in module._modules.items()}
    if all(children[name] is child for name, child in module._modules.items()):
        return module
    view = copy.copy(module)  # new __dict__; _parameters / _buffers stay the shared dicts
    view._modules = children
    return view


def _pads(conv: nn.Conv2d) -> bool:
    """Whether the convolution pads at all (1x1 and unpadded ones are left alone)."""
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def wraps(module: nn.Module) -> bool:
    """Whether `module` (a view from `circular_view`) pads any convolution circularly."""
    return any(isinstance(m, nn.Conv2d) and m.padding_mode == "circular"
               for m in module.modules())
