"""The right-hand side of a generation tab: progress, gallery, buttons, infotext.

`poll_job` submits nothing itself: a tab hands it a submitted job and it yields what
the page shows while the job runs (progress bar and live preview every 0.25 s), then
the images with their infotexts. Under the gallery: 📂 shows the output folder (a
headless server cannot open a file manager, so the path is shown), 💾 saves the
selected image to `log/images` with its infotext and offers it for download, 🗃️ zips
every image of the gallery, and the "Send to" buttons hand the selected picture to
another tab (wired by `webui.app`, which knows the targets).
"""

from __future__ import annotations

import html
import logging
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from modules.errors import without_paths
from modules.imaging.grid import image_grid
from modules.imaging.save import save_image
from modules.models.errors import ModelLoadError
from modules.pipeline.params import ParamsError
from webui import fields as F
from webui import progress as P
from webui.widgets import tool_button

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
SAVE_DIR = "log/images"  # A1111's default folder for the 💾 button
FOLDER_SYMBOL, SAVE_SYMBOL, ZIP_SYMBOL = "\U0001f4c2", "\U0001f4be", "\U0001f5c3\ufe0f"
UPSCALE_SYMBOL = "\u2728"  # txt2img: hires fix on the selected image (A1111's button)
# Marks bad numbers beside their field and holds Generate back (issue #25: nothing is
# silently clamped); runs once per page, whichever panel mounts first.
FORM_CHECKS_JS = Path(__file__).with_name("form_checks.js").read_text(encoding="utf-8")
SEND_TARGETS: dict[str, tuple[str, str]] = {  # target -> (symbol, tooltip)
    "img2img": ("\U0001f5bc\ufe0f", "Send image and generation parameters to img2img tab."),
    "inpaint": ("\U0001f3a8\ufe0f", "Send image and generation parameters to img2img inpaint "
                                    "tab."),
    "extras": ("\U0001f4d0", "Send image and generation parameters to extras tab."),
}


@dataclass
class ResultsUI:
    progress: gr.HTML
    gallery: gr.Gallery
    results: gr.State
    infotext: gr.HTML
    open_folder: gr.Button
    save: gr.Button
    zip: gr.Button
    send: dict[str, gr.Button]
    download: gr.File
    folder_info: gr.HTML
    upscale: gr.Button | None = None


def build_results(prefix: str, *, upscale: bool = False) -> ResultsUI:
    progress = gr.HTML(P.idle_html(), elem_id=f"{prefix}_progress")
    # Checks the number boxes in the browser (form_checks.js); renders nothing itself.
    gr.HTML("", js_on_load=FORM_CHECKS_JS, elem_id=f"{prefix}_form_checks",
            elem_classes=["easel-form-checks"])
    gallery = gr.Gallery(label="Output", format="png", columns=2, height=512,
                         object_fit="contain", elem_id=f"{prefix}_gallery",
                         interactive=False, buttons=["download", "fullscreen"])
    with gr.Row(elem_id=f"{prefix}_image_buttons", elem_classes=["image-buttons"]):
        open_folder = tool_button(FOLDER_SYMBOL, elem_id=f"{prefix}_open_folder")
        save = tool_button(SAVE_SYMBOL, elem_id=f"{prefix}_save")
        zip_button = tool_button(ZIP_SYMBOL, elem_id=f"{prefix}_zip")
        send = {name: tool_button(symbol, elem_id=f"{prefix}_send_to_{name}")
                for name, (symbol, _) in SEND_TARGETS.items()}
        upscale_button = (tool_button(UPSCALE_SYMBOL, elem_id=f"{prefix}_upscale")
                          if upscale else None)
    download = gr.File(label="Download", visible=False, interactive=False,
                       elem_id=f"{prefix}_download_files", file_count="multiple")
    folder_info = gr.HTML(elem_id=f"{prefix}_folder_info", elem_classes=["folder-info"])
    infotext = gr.HTML(elem_id=f"{prefix}_infotext", elem_classes=["infotext"])
    return ResultsUI(progress=progress, gallery=gallery, results=gr.State(empty_results()),
                     infotext=infotext, open_folder=open_folder, save=save, zip=zip_button,
                     send=send, download=download, folder_info=folder_info,
                     upscale=upscale_button)


def empty_results() -> dict[str, Any]:
    return {"infotexts": [], "seeds": [], "subseeds": [], "selected": 0, "time": 0.0,
            "folder": ""}


# ---------------------------------------------------------------- running a job


def error_message(error: Exception) -> str:
    """What the page says about `error`: "<widget label>: <reason>" for a `ParamsError`."""
    if isinstance(error, ParamsError):
        return f"{F.label_for(error.field)}: {error.reason}"
    if isinstance(error, gr.Error):
        return str(error.message)
    return without_paths(str(error))


def gr_error(error: Exception) -> gr.Error:
    """A visible error naming the widget for a `ParamsError`, else the message."""
    return gr.Error(error_message(error))


def error_html(message: str) -> str:
    """An error as the result panel shows it until the next run (a toast fades away)."""
    return (f'<div class="easel-error" role="alert"><strong>Error</strong> '
            f'<span class="easel-error-text">{html.escape(message)}</span></div>')


def poll_job(runtime, job, *, started: float, folder: str) -> Iterator[tuple]:
    """Yield (gallery, infotext, progress, results) while `job` runs, then its images."""
    shown_preview = None
    while True:
        try:
            result = job.wait(POLL_SECONDS)
            break
        except TimeoutError:
            preview = job.progress.preview if job.progress is not None else None
            gallery = [preview] if preview is not None and preview is not shown_preview \
                else gr.skip()
            shown_preview = preview or shown_preview
            yield gallery, gr.skip(), P.progress_html(runtime, job), gr.skip()
        except (ValueError, LookupError, ModelLoadError) as error:
            raise gr_error(error) from error
        except Exception as error:
            log.exception("generation failed")
            raise gr.Error(f"Generation failed: {without_paths(str(error))}") from error
    yield finished(runtime, result, started=started, folder=folder)


def finished(runtime, result, *, started: float, folder: str) -> tuple:
    """What the page shows for a `GenerationResult` (a grid first for several images)."""
    for warning in dict.fromkeys(result.warnings):
        gr.Warning(without_paths(warning))
    has_grid = result.extra.get("grid_included", False)
    with_grid = not has_grid and len(result.images) > 1 and runtime.settings.current.return_grid
    first = [0] if with_grid else []  # the grid shows the first image's parameters
    results = {"infotexts": [result.infotexts[i] for i in first] + list(result.infotexts),
               "seeds": [result.seeds[i] for i in first] + list(result.seeds),
               "subseeds": [result.subseeds[i] for i in first] + list(result.subseeds),
               "selected": 0, "time": time.time() - started, "folder": folder}
    images = ([image_grid(result.images)] if with_grid else []) + list(result.images)
    return (gallery_images(images, results["infotexts"]), infotext_html(results, 0),
            P.idle_html(), results)


def gallery_images(images: list, infotexts: list[str]) -> list:
    """PIL images with their infotext attached, so the PNG the gallery serves keeps it."""
    shown = []
    for image, text in zip(images, infotexts):
        copy = image.copy()
        copy.info["parameters"] = text
        shown.append(copy)
    return shown


def infotext_html(results: dict[str, Any], index: int) -> str:
    texts = results.get("infotexts") or []
    if not texts:
        return ""
    text = texts[min(index, len(texts) - 1)]
    body = html.escape(text).replace("\n", "<br>")
    return (f'<div class="infotext"><p>{body}</p>'
            f'<p class="time-taken">Time taken: {results.get("time", 0):.1f} sec.</p></div>')


def reuse_seed(results: dict[str, Any], key: str) -> int:
    """The seed (or variation seed) of the selected image, -1 when nothing was made yet."""
    values = results.get(key) or []
    if not values:
        return -1
    return int(values[min(results.get("selected", 0), len(values) - 1)])


# ---------------------------------------------------------------- gallery buttons


def gallery_paths(gallery: list | None) -> list[str]:
    """File paths of a Gallery's value (items are (path, caption) pairs or dicts)."""
    paths = []
    for item in gallery or []:
        if isinstance(item, (tuple, list)):
            item = item[0]
        if isinstance(item, dict):
            item = (item.get("image") or {}).get("path") if "image" in item else item.get("path")
        if item:
            paths.append(str(item))
    return paths


def selected_image(gallery: list | None, results: dict[str, Any]) -> tuple[Image.Image, str]:
    """(the selected picture, its infotext); an empty gallery is a visible error."""
    paths = gallery_paths(gallery)
    if not paths:
        raise gr.Error("There is no image in the gallery to send or save yet.")
    index = min(results.get("selected", 0), len(paths) - 1)
    with Image.open(paths[index]) as image:
        image.load()
        picture = image.copy()
    texts = results.get("infotexts") or []
    return picture, texts[index] if index < len(texts) else ""


def save_selected(runtime, gallery: list | None, results: dict[str, Any]) -> dict:
    """💾: the selected image into `log/images` with its infotext, offered for download."""
    image, text = selected_image(gallery, results)
    folder = runtime.paths.output_dir(SAVE_DIR)
    path = save_image(image, folder, seed=reuse_seed(results, "seeds"), prompt="",
                      infotext=text or None)
    return gr.update(value=[str(path)], visible=True)


def zip_gallery(runtime, gallery: list | None) -> dict:
    """🗃️: every gallery image (as PNG, infotext kept) in one zip file for download."""
    paths = gallery_paths(gallery)
    if not paths:
        raise gr.Error("There is no image in the gallery to zip yet.")
    folder = runtime.paths.output_dir(SAVE_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"images-{time.strftime('%Y%m%d-%H%M%S')}.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for number, path in enumerate(paths):
            archive.write(path, f"{number:05d}{Path(path).suffix}")
    return gr.update(value=[str(target)], visible=True)


def folder_html(runtime, results: dict[str, Any], default: str) -> str:
    """📂: where this tab's images are saved (shown, since the server may be headless)."""
    folder = runtime.paths.output_dir(results.get("folder") or default)
    return (f'<p class="folder-path">Images are saved in <code>{html.escape(str(folder))}'
            f'</code></p>')
