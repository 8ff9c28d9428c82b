"""Extra-network cards: checkpoints, LoRAs and embeddings, with preview pictures.

🎴 beside the prompt opens the cards; they are listed only then (and on 🔄), never
while the page is built, so a large models folder does not slow the start. A card's
preview is a same-named `.png` or `.preview.png` beside the file, shown as a small
inline thumbnail; without one, the card shows its name and kind in the picture's place.
Every card carries a kind badge ("LoRA", "Embedding", "Checkpoint"), since a LoRA and an
embedding may share a name (the shipped "easel-bar" pair). A search box and a sort
choice (name / date modified) above the cards re-list them on the server.

Clicking a card is handled by `script.js`: a LoRA inserts `<lora:name:1>` and an
embedding its name into the tab's prompt, and a second click removes it again (A1111
toggles); a checkpoint card writes its title into a hidden box whose change switches the
checkpoint (wired in `webui.app` with the top bar's dropdown).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr
from PIL import Image

from modules.networks.library import walk_files
from modules.paths import EMBEDDING_SUFFIXES
from webui.widgets import tool_button

THUMBNAIL_SIDE = 160
PREVIEW_SUFFIXES = (".preview.png", ".png")
KINDS = (("checkpoint", "Checkpoints"), ("lora", "Lora"), ("embedding", "Textual Inversion"))
BADGES = {"checkpoint": "Checkpoint", "lora": "LoRA", "embedding": "Embedding"}
SORTS = ("Name", "Date modified")  # date: newest first


@dataclass
class NetworksUI:
    panel: gr.Group
    cards: gr.HTML
    refresh: gr.Button
    search: gr.Textbox
    sort: gr.Radio
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
        with gr.Row(equal_height=True):
            search = gr.Textbox(label="Search", placeholder="Search by name...", scale=3,
                                elem_id=f"{prefix}_extra_networks_search")
            sort = gr.Radio(list(SORTS), value=SORTS[0], label="Sort by", scale=2,
                            elem_id=f"{prefix}_extra_networks_sort")
        cards = gr.HTML(elem_id=f"{prefix}_extra_networks_cards",
                        elem_classes=["extra-network-cards"])
    pick = gr.Textbox(visible="hidden", elem_id=f"{prefix}_extra_networks_checkpoint",
                      elem_classes=["checkpoint-pick"])
    return NetworksUI(panel=panel, cards=cards, refresh=refresh, search=search, sort=sort,
                      checkpoint_pick=pick, shown=gr.State(False))


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
    """A small PNG data URI of a preview; None for a file that is not a readable picture.
    Cached by modification time: the search box re-lists the cards on every keystroke."""
    try:
        return _thumbnail(str(path), path.stat().st_mtime_ns)
    except OSError:
        return None


@lru_cache(maxsize=512)
def _thumbnail(path: str, mtime_ns: int) -> str | None:
    del mtime_ns  # part of the cache key only
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def card_html(card: Card) -> str:
    """One card: the preview (or the name and kind in its place), the kind badge, the name."""
    preview = preview_for(card.path)
    uri = thumbnail_uri(preview) if preview is not None else None
    badge = BADGES[card.kind]
    name = html.escape(card.name)
    picture = (f'<img src="{uri}" alt="" loading="lazy">' if uri
               else f'<div class="card-no-preview"><span class="card-placeholder-name">{name}'
                    f'</span><span class="card-placeholder-kind">{badge}</span></div>')
    value = html.escape(card.value, quote=True)
    return (f'<div class="extra-network-card" data-kind="{card.kind}" '
            f'data-name="{html.escape(card.name, quote=True)}" data-value="{value}" '
            f'title="{badge}: {value}">{picture}'
            f'<span class="card-kind">{badge}</span>'
            f'<span class="card-name">{name}</span></div>')


def matching(cards: list[Card], search: str = "", sort: str = SORTS[0]) -> list[Card]:
    """The cards whose name (or inserted text) holds `search`, case-insensitive, sorted."""
    needle = (search or "").strip().lower()
    kept = [card for card in cards
            if not needle or needle in card.name.lower() or needle in card.value.lower()]
    if sort == "Date modified":
        return sorted(kept, key=lambda card: (-modified(card.path), card.name.lower()))
    return sorted(kept, key=lambda card: card.name.lower())


def cards_html(runtime, search: str = "", sort: str = SORTS[0]) -> str:
    """The cards, grouped by kind, as the panel shows them (filtered by `search`)."""
    cards = matching(list_cards(runtime), search, sort)
    empty = "No match." if (search or "").strip() else "Nothing here yet."
    sections = []
    for kind, title in KINDS:
        items = "".join(card_html(card) for card in cards if card.kind == kind)
        body = items or f'<p class="no-cards">{empty}</p>'
        sections.append(f'<div class="extra-network-section" data-kind="{kind}">'
                        f'<h4>{title}</h4><div class="card-list">{body}</div></div>')
    return "".join(sections)


def wire_networks(runtime, ui: NetworksUI, toggle: gr.Button) -> None:
    listing = [ui.search, ui.sort]

    def show(shown: bool, search: str, sort: str):
        if shown:
            return gr.update(visible=False), gr.skip(), False
        return gr.update(visible=True), cards_html(runtime, search, sort), True

    toggle.click(show, [ui.shown, *listing], [ui.panel, ui.cards, ui.shown], queue=False)

    def refresh(search: str, sort: str):
        if runtime.networks is not None:
            runtime.networks.loras.refresh()
        return cards_html(runtime, search, sort)

    ui.refresh.click(refresh, listing, ui.cards, queue=False)
    for widget in listing:
        widget.change(lambda search, sort: cards_html(runtime, search, sort), listing, ui.cards,
                      queue=False, show_progress="hidden", trigger_mode="always_last")
