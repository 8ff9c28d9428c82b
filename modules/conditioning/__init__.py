"""Prompt conditioning: text -> `Cond` / `ScheduledCond` / `MultiCond`.

`prompt_parser.py` / `prompt_schedule.py` read A1111's prompt language (emphasis,
`[from:to:when]`, `AND`, extra-network tags); `tokenizer.py` is the offline CLIP BPE;
`chunking.py` / `encode.py` / `sdxl.py` turn tokens into encoder outputs, 75-token
chunks and SDXL's size conditioning; `embeddings.py` holds textual-inversion vectors;
`conds.py` is the typed data handed to the samplers' CFG denoiser; `conditioner.py`
ties them together. SD3.x / Flux.1: `t5_tokenizer.py` and `t5_prompts.py` (T5 ids with
emphasis) and `flow_conditioner.py` (context and pooled vector of those transformers).
May import: nn (text encoders), models (family declarations), devices; never
`pipeline/`, `api/` or `webui/`.
"""


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
