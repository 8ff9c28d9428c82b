"""Pasted infotext -> always-on script arguments (`infotext_to_alwayson`), with fake
scripts: keys by `Script.infotext_fields`, values typed by the `Args` annotations,
unconvertible or out-of-range values left out as the other pasted fields."""

from __future__ import annotations

from dataclasses import dataclass

from modules.infotext import parse_infotext
from modules.pipeline.infotext_fields import infotext_to_alwayson
from modules.scripts.args import arg
from modules.scripts.base import AlwaysVisible, Script


class FakeFreeU(Script):
    @dataclass
    class Args:
        enabled: bool = arg(False, "Enable")
        b1: float = arg(1.1, "B1", minimum=0.0, maximum=3.0)
        steps: int = arg(10, "Steps", minimum=1, maximum=50)
        mode: str = arg("a", "Mode", choices=("a", "b"))
        note: str = arg("", "Note")

    def title(self) -> str:
        return "Fake FreeU"

    def show(self, is_img2img: bool):
        return AlwaysVisible

    def infotext_fields(self) -> dict[str, str]:
        return {"enabled": "fake_enabled", "b1": "fake_b1", "steps": "fake_steps",
                "mode": "fake_mode", "note": "fake_note", "missing": "fake_missing"}


class Silent(Script):
    def title(self) -> str:
        return "Silent"


class Broken(FakeFreeU):
    def title(self) -> str:
        return "Broken"

    def infotext_fields(self) -> dict[str, str]:
        raise RuntimeError("an extension's bug")


def test_infotext_fields_default_is_empty():
    assert Script().infotext_fields() == {}


def test_values_get_the_declared_types():
    parsed = {"fake_enabled": "True", "fake_b1": "1.3", "fake_steps": "12",
              "fake_mode": "b", "fake_note": "hi", "Steps": "20"}
    assert infotext_to_alwayson(parsed, [FakeFreeU(), Silent()]) == {
        "Fake FreeU": {"args": {"enabled": True, "b1": 1.3, "steps": 12, "mode": "b",
                                "note": "hi"}}}


def test_bool_spellings_and_whole_floats():
    found = infotext_to_alwayson({"fake_enabled": "false", "fake_steps": "7.0"}, [FakeFreeU()])
    assert found == {"Fake FreeU": {"args": {"enabled": False, "steps": 7}}}
    found = infotext_to_alwayson({"fake_enabled": "true"}, [FakeFreeU()])
    assert found["Fake FreeU"]["args"] == {"enabled": True}


def test_values_that_do_not_convert_are_left_out():
    parsed = {"fake_enabled": "maybe", "fake_b1": "lots", "fake_steps": "2.5",
              "fake_mode": "c", "fake_missing": "1"}
    assert infotext_to_alwayson(parsed, [FakeFreeU()]) == {"Fake FreeU": {"args": {}}}
    out_of_range = {"fake_b1": "9", "fake_steps": "0", "fake_note": "kept"}
    assert infotext_to_alwayson(out_of_range, [FakeFreeU()]) == {
        "Fake FreeU": {"args": {"note": "kept"}}}


def test_scripts_without_their_keys_are_absent():
    assert infotext_to_alwayson({"Steps": "20", "Seed": "1"}, [FakeFreeU(), Silent()]) == {}
    assert infotext_to_alwayson({"fake_b1": "1.2"}, [Broken()]) == {}


def test_from_a_real_infotext():
    text = "a cat\nSteps: 20, Seed: 1, fake_enabled: True, fake_b1: 1.25, Size: 64x64"
    found = infotext_to_alwayson(parse_infotext(text), [FakeFreeU()])
    assert found == {"Fake FreeU": {"args": {"enabled": True, "b1": 1.25}}}
