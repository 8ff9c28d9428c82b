"""Extra-network cards: checkpoints, LoRAs and embeddings, with preview pictures.

🎴 beside the prompt opens the cards; they are listed only then (and on 🔄), never
while the page is built, so a large models folder does not slow the start. A card's
preview is a same-named `.png` or `.preview.png` beside the file, shown as a small
inline thumbnail. Clicking a card is handled by `script.js`: a LoRA inserts
`<lora:name:1>` and an embedding its name into the tab's prompt; a checkpoint card
writes its title into a hidden box whose change switches the checkpoint (wired in
`webui.app` with the top bar's dropdown).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from modules.networks.library import walk_files
from modules.paths import EMBEDDING_SUFFIXES
from webui.widgets import tool_button

THUMBNAIL_SIDE = 160
PREVIEW_SUFFIXES = (".preview.png", ".png")
KINDS = (("checkpoint", "Checkpoints"), ("lora", "Lora"), ("embedding", "Textual Inversion"))


@dataclass
class NetworksUI:
    panel: gr.Group
    cards: gr.HTML
    refresh: gr.Button
    checkpoint_pick: gr.Textbox  # set by a checkpoint card's click (script.js)
    shown: gr.State


@dataclass(frozen=True)
class Card:
    kind: str  # "checkpoint" | "lora" | "embedding"
    name: str
    value: str  # text inserted into the prompt, or the checkpoint title
    path: Path


def build_networks(prefix: str) -> NetworksUI:
    with gr.Group(visible=False, elem_id=f"{prefix}_extra_networks_panel") as panel:
        with gr.Row(equal_height=True):
            gr.HTML("<b>Extra networks</b> &middot; click a card to use it",
                    elem_classes=["extra-networks-title"])
            refresh = tool_button("\U0001f504", elem_id=f"{prefix}_extra_networks_refresh")
        cards = gr.HTML(elem_id=f"{prefix}_extra_networks_cards",
                        elem_classes=["extra-network-cards"])
    pick = gr.Textbox(visible="hidden", elem_id=f"{prefix}_extra_networks_checkpoint",
                      elem_classes=["checkpoint-pick"])
    return NetworksUI(panel=panel, cards=cards, refresh=refresh, checkpoint_pick=pick,
                      shown=gr.State(False))


# ---------------------------------------------------------------- listing


def list_cards(runtime) -> list[Card]:
    """Every checkpoint, LoRA and embedding the folders hold (headers only, no tensors)."""
    found = [Card("checkpoint", Path(info.name).stem, info.title, Path(info.path))
             for info in runtime.models.checkpoints()]
    networks = runtime.networks
    if networks is not None:
        found += [Card("lora", entry.name, f"<lora:{entry.name}:1>", entry.path)
                  for entry in networks.loras.list()]
    found += [Card("embedding", path.stem, path.stem, path)
              for path in walk_files(runtime.paths.embeddings_dir, EMBEDDING_SUFFIXES)]
    return found


def preview_for(path: Path) -> Path | None:
    """`<stem>.preview.png` or `<stem>.png` beside the file (a folder: inside it)."""
    stem = path.name if path.is_dir() else path.stem
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.parent / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def thumbnail_uri(path: Path) -> str | None:
    """A small PNG data URI of a preview; None for a file that is not a readable picture."""
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def card_html(card: Card) -> str:
    preview = preview_for(card.path)
    uri = thumbnail_uri(preview) if preview is not None else None
    picture = (f'<img src="{uri}" alt="" loading="lazy">' if uri
               else '<div class="card-no-preview"></div>')
    return (f'<div class="extra-network-card" data-kind="{card.kind}" '
            f'data-value="{html.escape(card.value, quote=True)}" '
            f'title="{html.escape(card.value, quote=True)}">{picture}'
            f'<span class="card-name">{html.escape(card.name)}</span></div>')


def cards_html(runtime) -> str:
    """The cards, grouped by kind, as the panel shows them."""
    cards = list_cards(runtime)
    sections = []
    for kind, title in KINDS:
        items = "".join(card_html(card) for card in cards if card.kind == kind)
        body = items or '<p class="no-cards">Nothing here yet.</p>'
        sections.append(f'<div class="extra-network-section" data-kind="{kind}">'
                        f'<h4>{title}</h4><div class="card-list">{body}</div></div>')
    return "".join(sections)


def wire_networks(runtime, ui: NetworksUI, toggle: gr.Button) -> None:
    def show(shown: bool):
        if shown:
            return gr.update(visible=False), gr.skip(), False
        return gr.update(visible=True), cards_html(runtime), True

    toggle.click(show, ui.shown, [ui.panel, ui.cards, ui.shown], queue=False)

    def refresh():
        if runtime.networks is not None:
            runtime.networks.loras.refresh()
        return cards_html(runtime)

    ui.refresh.click(refresh, None, ui.cards, queue=False)
