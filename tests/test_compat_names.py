"""The A1111 compatibility names of docs/compatibility.md stay importable and complete.

Every "Offers:" line of that page lists the symbols one module provides; each must be
importable from that module, and a re-export module's `__all__` must be on its line (so
the page lists everything it exports). The re-exports must be the very objects of the
modules that do the work, not copies.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "compatibility.md"

COMPAT_NAMES = (
    "modules.processing", "modules.prompt_parser", "modules.images", "modules.infotext",
    "modules.devices", "modules.paths", "modules.styles", "modules.scripts",
    "modules.scripts.base", "modules.scripts.args", "modules.scripts.callbacks",
)
RE_EXPORTS = ("modules.processing", "modules.prompt_parser", "modules.images")


def documented_symbols() -> dict[str, list[str]]:
    """{module: [symbol, ...]} from the page: a `### \\`module\\`` heading followed by an
    "Offers:" paragraph, or a "- `module` offers: ..." list item."""
    text = PAGE.read_text("utf-8")
    found: dict[str, list[str]] = {}
    for module, names in re.findall(r"^### `([\w.]+)`\n\nOffers: (.+?)(?:\n\n)", text, re.M | re.S):
        found[module] = re.findall(r"`(\w+)`", names)
    for module, names in re.findall(r"^- `([\w.]+)` offers: (.+?)(?=\n- |\n\n)", text, re.M | re.S):
        found[module] = re.findall(r"`(\w+)`", names)
    return found


def test_page_documents_every_compatibility_name() -> None:
    documented = documented_symbols()
    assert set(documented) == set(COMPAT_NAMES) - {"modules.scripts"}
    assert all(documented.values())


@pytest.mark.parametrize("module", COMPAT_NAMES)
def test_compatibility_name_imports(module: str) -> None:
    importlib.import_module(module)


@pytest.mark.parametrize(("module", "symbols"), sorted(documented_symbols().items()))
def test_documented_symbols_exist(module: str, symbols: list[str]) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in symbols if not hasattr(imported, name)]
    assert not missing, f"{module} lacks {missing} (listed in docs/compatibility.md)"


@pytest.mark.parametrize("module", RE_EXPORTS)
def test_re_exports_are_all_documented(module: str) -> None:
    exported = set(importlib.import_module(module).__all__)
    assert exported == set(documented_symbols()[module])


def test_re_exports_are_the_working_objects() -> None:
    from modules import images, processing, prompt_parser
    from modules.conditioning import prompt_parser as conditioning_parser
    from modules.imaging import grid, save
    from modules.pipeline import img2img, params, txt2img

    assert processing.txt2img is txt2img.txt2img
    assert processing.img2img is img2img.img2img
    assert processing.Txt2ImgParams is params.Txt2ImgParams
    assert processing.GenerationResult is params.GenerationResult
    assert prompt_parser.parse_prompt_attention is conditioning_parser.parse_prompt_attention
    assert prompt_parser.get_learned_conditioning_prompt_schedules is (
        conditioning_parser.get_learned_conditioning_prompt_schedules)
    assert images.save_image is save.save_image
    assert images.image_grid is grid.image_grid


def test_a1111_internals_are_not_emulated() -> None:
    """docs/compatibility.md, "Not emulated": these A1111 modules do not exist here."""
    for name in ("modules.shared", "modules.script_callbacks", "modules.sd_hijack"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)


def test_prompt_parser_keeps_a1111_results() -> None:
    from modules.prompt_parser import parse_prompt_attention

    assert parse_prompt_attention("a (b:1.5) [c]") == [
        ["a ", 1.0], ["b", 1.5], [" ", 1.0], ["c", pytest.approx(1 / 1.1)]]
