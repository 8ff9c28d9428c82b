"""Prompt conditioning: text -> `Cond` / `ScheduledCond` / `MultiCond` (see conditioner.py)."""

from modules.conditioning.conditioner import Conditioner, ConditioningSettings
from modules.conditioning.embeddings import EmbeddingTable, TextualInversion
from modules.conditioning.sdxl import SizeConditioning

__all__ = [
    "Conditioner",
    "ConditioningSettings",
    "EmbeddingTable",
    "SizeConditioning",
    "TextualInversion",
]
