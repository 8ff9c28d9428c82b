"""A1111 compatibility name: `modules.processing` (the generation pipeline).

Extensions and scripts written against A1111 import `modules.processing`; in Easel the
pipeline lives in `modules/pipeline/`. This module only re-exports it, so the old name
keeps working; new code imports from `modules.pipeline.*`. The compatibility surface is
listed in docs/compatibility.md.
"""

from modules.pipeline.img2img import img2img
from modules.pipeline.output import collect_batch, infotext_for
from modules.pipeline.params import GenerationResult, Img2ImgParams, Txt2ImgParams
from modules.pipeline.plan import LatentStart, Plan, plan_txt2img
from modules.pipeline.sample import sample_batch
from modules.pipeline.txt2img import txt2img

__all__ = [
    "GenerationResult", "Img2ImgParams", "LatentStart", "Plan", "Txt2ImgParams",
    "collect_batch", "img2img", "infotext_for", "plan_txt2img", "sample_batch", "txt2img",
]
