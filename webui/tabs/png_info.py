"""The PNG Info tab: drop an image, read its generation parameters, send them on.

Reading is `modules.imaging.save.read_image_info` (PNG text chunk, EXIF UserComment, GIF
comment, NovelAI); "Send to txt2img" fills the txt2img widgets through the same
conversion as the ↙️ paste button and switches to that tab. "Send to img2img / inpaint /
extras" (A1111's row of four) hand the picture and its parameters to the galleries'
send targets (`webui.send_to`), wired by `wire_send`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules.imaging.save import read_image_info

SEND_TARGETS = (("img2img", "Send to img2img"), ("inpaint", "Send to inpaint"),
                ("extras", "Send to extras"))


@dataclass
class PngInfoTab:
    image: gr.Image
    parameters: gr.Textbox
    other: gr.HTML
    send_to_txt2img: gr.Button
    send: dict[str, gr.Button]  # the other targets, by `SEND_TARGETS` name


def build() -> PngInfoTab:
    with gr.Row(elem_id="pnginfo_page"):
        with gr.Column():
            image = gr.Image(label="Source", type="filepath", sources=["upload", "clipboard"],
                             elem_id="pnginfo_image", height=480)
        with gr.Column():
            parameters = gr.Textbox(label="Parameters", lines=8, interactive=False,
                                    elem_id="pnginfo_parameters", buttons=["copy"])
            other = gr.HTML(elem_id="pnginfo_other")
            with gr.Row(elem_id="pnginfo_send_buttons"):
                send = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
                others = {name: gr.Button(label, elem_id=f"pnginfo_send_to_{name}")
                          for name, label in SEND_TARGETS}
    tab = PngInfoTab(image=image, parameters=parameters, other=other, send_to_txt2img=send,
                     send=others)
    image.change(read_info, image, [parameters, other], queue=False)
    return tab


def wire_send(tab: PngInfoTab, targets: dict, tabs: gr.Tabs) -> None:
    """Each "Send to" button to its `webui.send_to.SendTarget` (hidden when it has none)."""
    from webui.send_to import send_values

    for name, button in tab.send.items():
        target = targets.get(name)
        if target is None:
            button.visible = False  # read when the page config is made
            continue

        def send(path, text, target=target):
            if not path:
                raise gr.Error("Source: drop an image here first.")
            with Image.open(path) as image:
                image.load()
                picture = image.copy()
            return send_values(target, picture, text or "")

        button.click(send, [tab.image, tab.parameters],
                     [target.image, *target.extra_outputs, tabs], queue=False)


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
