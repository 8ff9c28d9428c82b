"""A1111 compatibility name: `modules.prompt_parser` (the prompt language).

A1111 extensions import the prompt parser under this name; in Easel it lives in
`modules/conditioning/prompt_parser.py` (schedules in `prompt_schedule.py`). This
module only re-exports it; see docs/compatibility.md.
"""

from modules.conditioning.prompt_parser import (
    ExtraNetworkTag,
    extract_extra_networks,
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    parse_prompt_attention,
    split_and_weights,
    strip_comments,
)

__all__ = [
    "ExtraNetworkTag", "extract_extra_networks", "get_learned_conditioning_prompt_schedules",
    "get_multicond_prompt_list", "parse_prompt_attention", "split_and_weights",
    "strip_comments",
]
