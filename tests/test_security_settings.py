"""Issue #17 items 1 and 2: settings a client may not change, and where files may go.

Guarded settings (`guard=` in modules/settings.py: the URL-request policy and every
output folder) are refused through every client route unless the server runs with
`--allow-api-protected-settings`; folders must then stay inside the data directory,
and `--hide-ui-dir-config` / `--freeze-settings` lock them entirely.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from modules.api.app import create_api_app
from modules.api.convert import decode_image
from modules.api.errors import ApiError
from modules.runtime import SettingsStore
from modules.settings import ClientAccess, Settings, SettingsError, SettingsForbidden
from tests.helpers.api_runtime import SMALL, make_runtime

OPTIONS = "/sdapi/v1/options"
TXT2IMG = "/sdapi/v1/txt2img"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("security-data"))
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    """A server started with --allow-api-protected-settings."""
    rt = make_runtime(tmp_path_factory.mktemp("allowed-data"), "--allow-api-protected-settings")
    yield rt, TestClient(create_api_app(rt))
    rt.jobs.stop()


def files_under(folder):
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# ---------------------------------------------------------------- item 1: URL policy
def test_override_settings_cannot_persist_the_local_request_policy(client, runtime):
    body = {**SMALL, "prompt": "x", "override_settings": {"api_forbid_local_requests": False},
            "override_settings_restore_afterwards": False}
    response = client.post(TXT2IMG, json=body)
    assert response.status_code == 403, response.text
    assert "api_forbid_local_requests" in response.json()["detail"]
    assert runtime.settings.current.api_forbid_local_requests is True
    assert client.post(OPTIONS, json={"api_forbid_local_requests": False}).status_code == 403


def test_every_route_meets_the_same_guard():
    """The per-request copy, the saved store and the default access all refuse."""
    with pytest.raises(SettingsForbidden, match="api_enable_requests"):
        Settings().with_overrides({"api_enable_requests": False})
    with pytest.raises(SettingsForbidden, match="outdir_extras_samples"):
        Settings().with_overrides({"outdir_extras_samples": "/etc"})
    # Sending a guarded setting back unchanged (GET options, then POST them) is no change.
    assert Settings().with_overrides({"api_forbid_local_requests": True}) == Settings()


def test_options_echoed_back_whole_are_accepted(client):
    options = client.get(OPTIONS).json()
    assert client.post(OPTIONS, json=options).status_code == 200


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args):
        pass


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fetch_errors_do_not_tell_ports_apart():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = Settings(api_forbid_local_requests=False)  # as the operator may configure
    details = []
    try:
        for port in (server.server_address[1], _closed_port()):
            with pytest.raises(ApiError) as caught:
                decode_image(f"http://127.0.0.1:{port}/a.png", settings)
            details.append((caught.value.status_code, caught.value.detail))
    finally:
        server.shutdown()
    assert details[0] == details[1] == (400, "image URL: could not fetch the image")


# ---------------------------------------------------------------- item 2: folders
def test_output_folders_are_not_settable_through_the_api(client, runtime, tmp_path):
    outside = tmp_path / "outside"
    for value in (str(outside), "../../../outside"):
        response = client.post(OPTIONS, json={"outdir_txt2img_samples": value})
        assert response.status_code == 403, response.text
        assert "outdir_txt2img_samples" in response.json()["detail"]
    body = {**SMALL, "prompt": "x", "save_images": True,
            "override_settings": {"outdir_txt2img_samples": str(outside)}}
    response = client.post(TXT2IMG, json=body)
    assert response.status_code == 403 and "outdir_txt2img_samples" in response.text
    assert files_under(outside) == []
    assert runtime.settings.current.outdir_txt2img_samples == "outputs/txt2img-images"


def test_allowed_folders_stay_inside_the_data_directory(allowed, tmp_path):
    rt, client = allowed
    outside = tmp_path / "outside"
    for value in (str(outside), "../../../outside", "outputs/../../x"):
        response = client.post(OPTIONS, json={"outdir_txt2img_samples": value})
        assert response.status_code == 422, response.text
        assert "outdir_txt2img_samples" in response.json()["detail"]
    body = {**SMALL, "prompt": "x", "save_images": True,
            "override_settings": {"outdir_txt2img_samples": str(outside)}}
    assert client.post(TXT2IMG, json=body).status_code == 422
    assert files_under(outside) == []
    body["override_settings"] = {"outdir_txt2img_samples": "outputs/mine"}
    assert client.post(TXT2IMG, json=body).status_code == 200
    assert len(files_under(rt.paths.data_dir / "outputs" / "mine")) == 1
    assert client.post(OPTIONS, json={"api_forbid_local_requests": False}).status_code == 200
    assert client.post(OPTIONS, json={"api_forbid_local_requests": True}).status_code == 200


@pytest.mark.parametrize("flag", ["--hide-ui-dir-config", "--freeze-settings"])
def test_locked_folders_ignore_overrides_even_when_allowed(tmp_path, flag):
    rt = make_runtime(tmp_path, "--allow-api-protected-settings", flag)
    try:
        client = TestClient(create_api_app(rt))
        body = {**SMALL, "prompt": "x", "save_images": True,
                "override_settings": {"outdir_txt2img_samples": "outputs/mine"}}
        response = client.post(TXT2IMG, json=body)
        assert response.status_code == 403 and "outdir_txt2img_samples" in response.text
        assert files_under(tmp_path / "outputs" / "mine") == []
    finally:
        rt.jobs.stop()


def test_settings_tab_follows_hide_ui_dir_config(tmp_path):
    """The UI's Settings tab (origin "ui") may move folders unless they are locked."""
    store = SettingsStore(tmp_path / "config.json")
    assert store.update({"outdir_txt2img_samples": "/srv/out"}, origin="ui")
    locked = SettingsStore(tmp_path / "config.json",
                           access=ClientAccess(data_dir=tmp_path, folders_locked=True))
    with pytest.raises(SettingsForbidden, match="outdir_txt2img_grids"):
        locked.update({"outdir_txt2img_grids": "elsewhere"}, origin="ui")
    with pytest.raises(SettingsForbidden):
        store.update({"outdir_txt2img_grids": "elsewhere"})  # a client, not the UI
    assert issubclass(SettingsForbidden, PermissionError)
    assert not issubclass(SettingsForbidden, SettingsError)


def test_img2img_batch_from_directory_follows_hide_ui_dir_config(tmp_path):
    import gradio as gr

    from webui.tabs.img2img import batch_folders

    runtime = SimpleNamespace(args=SimpleNamespace(hide_ui_dir_config=True))
    with pytest.raises(gr.Error, match="hide-ui-dir-config"):
        batch_folders(runtime, {"input_dir": str(tmp_path), "output_dir": str(tmp_path)})


# ------------------------------------------------- item 2: train/embedding's data_root
TRAIN = "/sdapi/v1/train/embedding"


@pytest.fixture(scope="module")
def listening(tmp_path_factory):
    """A server reachable from other machines (--listen)."""
    rt = make_runtime(tmp_path_factory.mktemp("listen-data"), "--listen")
    yield rt, TestClient(create_api_app(rt))
    rt.jobs.stop()


def train_detail(client, data_root) -> tuple[int, str]:
    response = client.post(TRAIN, json={"embedding_name": "nobody", "data_root": str(data_root),
                                        "steps": 2})
    return response.status_code, response.json()["detail"]


def test_data_root_stays_inside_the_data_directory_when_listening(listening, tmp_path):
    rt, client = listening
    existing, missing = tmp_path / "photos", tmp_path / "no-such-folder"
    existing.mkdir()
    answers = [train_detail(client, folder) for folder in (existing, missing, "/etc")]
    assert all(status == 422 and "data_root" in detail for status, detail in answers)
    # The answer is the same whether the folder exists or not: only the echoed name differs.
    shapes = {re.sub(r"'[^']*'", "X", detail) for _, detail in answers}
    assert len(shapes) == 1, shapes
    inside = rt.paths.data_dir / "datasets" / "photos"
    inside.mkdir(parents=True)
    status, detail = train_detail(client, inside)  # accepted: the next check is the name
    assert status == 422 and "embedding_name" in detail, detail


def test_data_root_may_be_anywhere_on_a_local_server(client, tmp_path):
    status, detail = train_detail(client, tmp_path)
    assert status == 422 and "embedding_name" in detail, detail


@pytest.mark.parametrize("flags", [["--subpath", "/sd"], ["--allowed-hosts", "sd.example.com"],
                                   ["--server-name", "0.0.0.0"]])
def test_a_proxied_or_named_server_is_not_local(flags):
    """Behind a `--subpath` proxy or reached by `--allowed-hosts` names, remote clients
    arrive at 127.0.0.1: training reads only inside the data directory there too, and the
    same rule decides extension installs."""
    from modules.app.cmd_args import parse_args
    from modules.extensions.install import server_is_local
    from modules.paths import serves_only_locally

    args = parse_args(flags)
    assert not serves_only_locally(args) and not server_is_local(args)
    assert serves_only_locally(parse_args([])) and serves_only_locally(
        parse_args(["--server-name", "[::1]"]))


@pytest.mark.parametrize("flags, operator", [([], True), (["--listen"], False),
                                             (["--listen", "--gradio-auth", "u:p"], True)])
def test_the_ui_is_the_operators_page_only_where_strangers_cannot_reach_it(
        tmp_path, flags, operator):
    """Gradio's events can be called by any client: on a server open to others without a
    login, the Settings tab and the top bar get a client's rules for guarded settings."""
    from modules.app.cmd_args import parse_args

    access = ClientAccess.from_args(parse_args(flags), tmp_path)
    store = SettingsStore(tmp_path / "config.json", access=access)
    change = {"api_forbid_local_requests": False}
    if operator:
        assert store.update(change, origin="ui")
    else:
        with pytest.raises(SettingsForbidden, match="api_forbid_local_requests"):
            store.update(change, origin="ui")
        with pytest.raises(SettingsForbidden, match="outdir_txt2img_samples"):
            store.update({"outdir_txt2img_samples": "/etc/cron.d"}, origin="ui")
