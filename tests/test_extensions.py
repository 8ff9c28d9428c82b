"""Extensions end to end: loading, hooks, callbacks, settings, routes, errors, composition."""

from __future__ import annotations

import base64
import json
import sys

import pytest
from fastapi.testclient import TestClient

from modules.api.app import create_api_app
from modules.app.cmd_args import parse_args
from modules.infotext import parse_infotext
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.api_runtime import SMALL
from tests.helpers.checkpoints import finish
from tests.helpers.extensions import install_fixtures, runtime_with

AUTH = {"Authorization": "Basic " + base64.b64encode(b"user:pw").decode()}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = runtime_with(tmp_path_factory.mktemp("ext"), ("sample_ext", "broken_import",
                                                       "broken_hook"), "--api-auth", "user:pw")
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def run(runtime, **fields):
    return finish(txt2img(runtime, Txt2ImgParams(**{**SMALL, **fields})))[0]


def test_scripts_load_and_broken_import_is_listed_not_fatal(runtime, client):
    titles = [s.title() for s in runtime.extensions.alwayson(False)]
    assert "Sample Script" in titles and "Broken hook" in titles
    items = {item["name"]: item for item in client.get("/sdapi/v1/extensions",
                                                      headers=AUTH).json()}
    assert set(items) >= {"sample_ext", "broken_import", "broken_hook"}
    assert items["sample_ext"]["errors"] == [] and items["sample_ext"]["enabled"] is True
    assert "broken_import fails at import on purpose" in items["broken_import"]["errors"][0]
    assert "broken.py" in items["broken_import"]["errors"][0]
    # The UI module is for webui only: loading extensions never imports it (or gradio).
    assert "easel_ext.sample_ext.ui" not in sys.modules


def test_hook_errors_become_warnings_and_the_job_completes(runtime):
    result = run(runtime, prompt="x", seed=3)
    assert len(result.images) == 1
    assert any("broken_hook fails in process on purpose" in w for w in result.warnings)
    assert any("cfg callback fails on purpose" in w for w in result.warnings)
    # Reported once per hook, not once per step.
    assert sum("cfg callback" in w for w in result.warnings) == 1


def test_alwayson_args_as_dict_reach_the_script_and_infotext(runtime):
    result = run(runtime, prompt="x", seed=3, alwayson_scripts={
        "sample script": {"args": {"enabled": True, "strength": 1.25, "tag": "a, b"}}})
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Sample strength"] == "1.25" and parsed["Sample tag"] == "a, b"
    assert result.images[0].getpixel((0, 0)) == (255, 0, 255)


def test_callbacks_settings_and_route_behind_auth(runtime, client):
    assert client.get("/sample-ext/status").status_code == 401
    before = client.get("/sample-ext/status", headers=AUTH).json()
    run(runtime, prompt="x", seed=5, do_not_save_samples=False)
    after = client.get("/sample-ext/status", headers=AUTH).json()
    assert after["greeting"] == "hello"
    assert after["cfg"] > before["cfg"] and after["after_cfg"] > before["after_cfg"]
    assert len(after["saved"]) == len(before["saved"]) + 1
    runtime.extensions.options.update({"sample_greeting": "hi"})
    assert client.get("/sample-ext/status", headers=AUTH).json()["greeting"] == "hi"
    with pytest.raises(ValueError, match="sample_greeting: expected a string"):
        runtime.extensions.options.update({"sample_greeting": 3})
    saved = json.loads((runtime.paths.data_dir / "extension_config.json").read_text())
    assert saved == {"sample_greeting": "hi"}


def test_api_alwayson_args_as_list_and_errors(client):
    body = {**SMALL, "prompt": "x", "seed": 1,
            "alwayson_scripts": {"Sample Script": {"args": [True, 0.75, "t"]}}}
    response = client.post("/sdapi/v1/txt2img", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert "Sample strength: 0.75" in info["infotexts"][0]
    bad = {**body, "alwayson_scripts": {"Sample Script": {"args": {"strength": 9.0}}}}
    response = client.post("/sdapi/v1/txt2img", json=bad, headers=AUTH)
    assert response.status_code == 422
    assert "Sample Script.strength" in response.text and "maximum" in response.text
    unknown = {**body, "alwayson_scripts": {"nope": {"args": []}}}
    response = client.post("/sdapi/v1/txt2img", json=unknown, headers=AUTH)
    assert response.status_code == 422 and "always on script nope not found" in response.text
    selectable = {**body, "alwayson_scripts": {"X/Y/Z plot": {"args": []}}}
    assert "selectable script" in client.post("/sdapi/v1/txt2img", json=selectable,
                                              headers=AUTH).text
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "missing"},
                           headers=AUTH)
    assert response.status_code == 422 and "Script 'missing' not found" in response.text


def test_disable_persists_and_stops_hooks(runtime):
    runtime.extensions.set_enabled("broken_hook", False)
    try:
        assert json.loads(runtime.settings.current.disabled_extensions) == ["broken_hook"]
        result = run(runtime, prompt="x", seed=3)
        assert not any("broken_hook" in w for w in result.warnings)
        assert "Broken hook" not in [s.title() for s in runtime.extensions.alwayson(False)]
    finally:
        runtime.extensions.set_enabled("broken_hook", True)
    with pytest.raises(ValueError, match="disabled_extensions"):
        runtime.settings.update({"disabled_extensions": "{not a list"})


def test_two_extensions_on_the_same_hooks_compose(tmp_path):
    rt = runtime_with(tmp_path, ("compose_a", "compose_b"))
    result = run(rt, prompt="x", seed=2)
    assert parse_infotext(result.infotexts[0])["Compose"] == "a b"
    image = result.images[0]
    assert image.getpixel((0, 0)) == (255, 0, 0) and image.getpixel((1, 0)) == (0, 255, 0)


def test_preload_flags_install_once_and_disable_flags(tmp_path):
    root = install_fixtures(tmp_path, "sample_ext")
    args = parse_args(["--data-dir", str(tmp_path), "--sample-flag", "on"])
    assert args.sample_flag == "on"
    from modules.extensions.registry import ExtensionRegistry, extension_roots
    from modules.paths import Paths

    paths = Paths.from_args(args)
    for _ in range(2):
        ExtensionRegistry(roots=extension_roots(paths), args=args).load()
    assert (root / "sample_ext" / "install_runs.txt").read_text() == "x"  # once per change
    (root / "sample_ext" / "install.py").write_text(
        (root / "sample_ext" / "install.py").read_text() + "\n# changed\n")
    ExtensionRegistry(roots=extension_roots(paths), args=args).load()
    assert (root / "sample_ext" / "install_runs.txt").read_text() == "xx"
    off = parse_args(["--data-dir", str(tmp_path), "--disable-extra-extensions"])
    registry = ExtensionRegistry(roots=extension_roots(paths), args=off)
    registry.load()
    assert not any(ext.enabled for ext in registry.extensions if not ext.builtin)
    builtin = {ext.name for ext in registry.extensions if ext.builtin}  # e.g. controlnet
    assert [s for s in registry.alwayson(False) if s.extension not in builtin] == []
    with pytest.raises(SystemExit):
        parse_args(["--data-dir", str(tmp_path), "--disable-all-extensions", "--sample-flag", "x"])
