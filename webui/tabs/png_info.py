"""The PNG Info tab: drop an image, read its generation parameters, send them on.

Reading is `modules.imaging.save.read_image_info` (PNG text chunk, EXIF UserComment, GIF
comment, NovelAI); "Send to txt2img" fills the txt2img widgets through the same
conversion as the ↙️ paste button and switches to that tab.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules.imaging.save import read_image_info


@dataclass
class PngInfoTab:
    image: gr.Image
    parameters: gr.Textbox
    other: gr.HTML
    send_to_txt2img: gr.Button


def build() -> PngInfoTab:
    with gr.Row(elem_id="pnginfo_page"):
        with gr.Column():
            image = gr.Image(label="Source", type="filepath", sources=["upload", "clipboard"],
                             elem_id="pnginfo_image", height=480)
        with gr.Column():
            parameters = gr.Textbox(label="Parameters", lines=8, interactive=False,
                                    elem_id="pnginfo_parameters", buttons=["copy"])
            other = gr.HTML(elem_id="pnginfo_other")
            send = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
    tab = PngInfoTab(image=image, parameters=parameters, other=other, send_to_txt2img=send)
    image.change(read_info, image, [parameters, other], queue=False)
    return tab


def read_info(path: str | None) -> tuple[str, str]:
    """(the infotext, an HTML list of the image's other metadata items)."""
    if not path:
        return "", ""
    with Image.open(path) as image:
        infotext, items = read_image_info(image)
    return infotext or "", other_items_html(items)


def other_items_html(items: dict[str, Any]) -> str:
    rows = []
    for key, value in items.items():
        if isinstance(value, bytes):
            value = f"<{len(value)} bytes>"
        rows.append(f"<div><b>{html.escape(str(key))}</b>"
                    f"<p>{html.escape(str(value))}</p></div>")
    return f'<div class="pnginfo-items">{"".join(rows)}</div>' if rows else ""
