""""Send to img2img / inpaint / extras": a gallery's selected picture goes to another tab.

A `SendTarget` says which top-level tab to open, which component receives the picture,
and which other updates go with it (img2img also takes the picture's generation
parameters, as A1111's buttons do). `webui.app.send_targets` lists the targets that
exist; a "Send to" button without a target is hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from webui.panel import GenerationPanel
from webui.panel_results import selected_image


@dataclass
class SendTarget:
    """Where a picture goes: `tab` (top-level tab id), `image` (the receiving component)
    and `extra_outputs`, filled by `extra_values(picture, infotext)`."""

    tab: str
    image: Any
    picture_value: Callable[[Image.Image], Any] = lambda picture: picture
    extra_outputs: list[Any] = field(default_factory=list)
    extra_values: Callable[[Image.Image, str], list] = lambda picture, text: []


def editor_value(picture: Image.Image) -> dict[str, Any]:
    """An `ImageEditor` value holding `picture` with no strokes yet."""
    return {"background": picture, "layers": [], "composite": picture}


def send_values(target: SendTarget, picture: Image.Image, text: str) -> list:
    """The outputs of sending `picture` (with its infotext `text`) to `target`. The
    picture carries `text` as its PNG `parameters`, so Extras writes them into its result
    as it does for an uploaded file (A1111 keeps them too)."""
    if text:
        picture.info["parameters"] = text
    return [target.picture_value(picture), *target.extra_values(picture, text),
            gr.Tabs(selected=target.tab)]


def wire_send(panel: GenerationPanel, targets: dict[str, SendTarget], tabs: gr.Tabs) -> None:
    """Each of the panel's "Send to" buttons to its target (hidden when it has none)."""
    ui = panel.results_ui
    for name, button in ui.send.items():
        target = targets.get(name)
        if target is None:
            button.visible = False  # read when the page config is made
            continue

        def send(gallery, results, target=target):
            picture, text = selected_image(gallery, results)
            return send_values(target, picture, text)

        button.click(send, [ui.gallery, ui.results],
                     [target.image, *target.extra_outputs, tabs], queue=False)
