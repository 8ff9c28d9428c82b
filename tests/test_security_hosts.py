"""Issue #17 item 5: Host header checks (DNS rebinding) and Install from URL's guards."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from modules.api.app import create_api_app
from modules.app.cmd_args import parse_args
from modules.app.hosts import HostRules
from modules.app.server import add_server_middleware
from modules.extensions.install import ExtensionAccessError, install_from_url
from modules.extensions.url_check import refuse_private_host
from tests.helpers.webui_runtime import make_runtime


def served(*flags: str) -> TestClient:
    app = FastAPI()
    app.get("/ping")(lambda: {"ok": True})

    @app.websocket("/ws")
    async def ws(socket: WebSocket):
        await socket.accept()
        await socket.close()

    add_server_middleware(app, parse_args(list(flags)))
    return TestClient(app, base_url="http://127.0.0.1:7860")


def status(client: TestClient, host: str) -> int:
    return client.get("/ping", headers={"Host": host}).status_code


def test_default_serves_loopback_names_only():
    client = served()
    for host in ("127.0.0.1:7860", "localhost:7860", "LOCALHOST.", "[::1]:7860",
                 "127.0.0.2", "app.localhost:7860"):
        assert status(client, host) == 200, host
    for host in ("evil.example", "evil.example:7860", "localhost.evil.example",
                 "192.168.1.20:7860", "[fe80::1]:7860", "127.0.0.1.evil.example"):
        assert status(client, host) == 400, host
    refused = client.get("/ping", headers={"Host": "evil.example"}).json()
    assert refused["field"] == "Host" and "'evil.example'" in refused["detail"]
    assert "--allowed-hosts" in refused["detail"]
    assert not HostRules.from_args(parse_args([])).allows(None)  # no Host header at all


def test_websocket_with_a_foreign_host_is_refused():
    client = served()
    with client.websocket_connect("/ws", headers={"Host": "localhost:7860"}):
        pass
    with pytest.raises(WebSocketDisconnect), client.websocket_connect(
            "/ws", headers={"Host": "evil.example"}):
        pass


def test_listen_accepts_ip_literals_and_the_machine_name_but_not_other_names():
    import socket

    client = served("--listen")
    for host in ("192.168.1.20:7860", "[fe80::1]:7860", "10.0.0.5", "localhost",
                 socket.gethostname()):
        assert status(client, host) == 200, host
    assert status(client, "evil.example:7860") == 400
    assert status(served("--server-name", "0.0.0.0"), "192.168.1.20") == 200


def test_server_name_and_allowed_hosts_add_names():
    named = served("--server-name", "studio.lan")
    assert status(named, "studio.lan:7860") == 200
    assert status(named, "192.168.1.20") == 400  # not --listen: no foreign IP literals
    listed = served("--allowed-hosts", "sd.example.com, *.corp.example", "--subpath", "/sd")
    assert status(listed, "sd.example.com") == 200
    assert status(listed, "gpu.corp.example:443") == 200
    assert status(listed, "corp.example") == 400
    assert status(listed, "evil.example") == 400
    assert status(served("--allowed-hosts", "*"), "anything.example") == 200
    assert status(served("--share"), "0123abcd.gradio.live") == 200
    with pytest.raises(SystemExit, match="allowed-hosts"):
        HostRules.from_args(parse_args(["--allowed-hosts", "a/b"]))


def test_the_served_api_refuses_a_rebound_host(tmp_path):
    runtime = make_runtime(tmp_path, "--nowebui", load=False)
    app = create_api_app(runtime)
    add_server_middleware(app, runtime.args)
    client = TestClient(app, base_url="http://127.0.0.1:7861")
    try:
        assert client.get("/sdapi/v1/samplers").status_code == 200
        rebound = client.get("/sdapi/v1/samplers", headers={"Host": "evil.example:7861"})
        assert rebound.status_code == 400
    finally:
        runtime.jobs.stop()


def test_the_ui_and_its_event_routes_refuse_a_rebound_host(tmp_path):
    """The reported path: `Host: evil.example` reached the UI's Install from URL event."""
    from webui.app import create_app

    runtime = make_runtime(tmp_path, load=False)
    runtime.ready.set()
    app = create_app(runtime)
    add_server_middleware(app, runtime.args)
    client = TestClient(app, base_url="http://localhost:7860")
    try:
        assert client.get("/").status_code == 200
        evil = {"Host": "evil.example:7860"}
        assert client.get("/", headers=evil).status_code == 400
        assert client.post("/gradio_api/queue/join", json={}, headers=evil).status_code == 400
        assert client.post("/gradio_api/run/predict", json={}, headers=evil).status_code == 400
    finally:
        runtime.jobs.stop()


# ------------------------------------------------------------------ Install from URL

def test_an_exposed_server_needs_a_login_to_install(tmp_path):
    exposed = parse_args(["--listen", "--enable-insecure-extension-access"])
    with pytest.raises(ExtensionAccessError, match="needs a login"):
        install_from_url(exposed, tmp_path, "https://example.com/a/b.git")
    for flags in (["--subpath", "/sd"], ["--allowed-hosts", "sd.example.com"]):
        with pytest.raises(ExtensionAccessError, match="not local"):
            install_from_url(parse_args(flags), tmp_path, "https://example.com/a/b.git")
    logged_in = parse_args(["--listen", "--enable-insecure-extension-access",
                            "--gradio-auth", "u:p"])
    with pytest.raises(ExtensionAccessError, match="allow-private-extension-urls"):
        install_from_url(logged_in, tmp_path, "http://127.0.0.1:9/x.git")  # past the login
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/x.git", "https://localhost/x.git", "http://10.1.2.3/x.git",
    "http://192.168.0.1/x.git", "http://169.254.169.254/latest/meta-data",
    "http://[::1]:9/x.git", "http://[::ffff:127.0.0.1]/x.git", "git@localhost:x/y.git",
    "ssh://git@172.16.0.1/x.git", "http://0.0.0.0:9/x.git", "http://100.64.0.1/x.git",
])
def test_private_git_urls_are_refused(tmp_path, url):
    with pytest.raises(ExtensionAccessError, match="allow-private-extension-urls"):
        install_from_url(parse_args([]), tmp_path, url)
    assert not any(tmp_path.iterdir())


def test_allow_private_extension_urls_lets_git_try(tmp_path):
    allowed = parse_args(["--allow-private-extension-urls"])
    with pytest.raises(RuntimeError, match="git clone failed"):  # nothing listens on port 9
        install_from_url(allowed, tmp_path, "http://127.0.0.1:9/x.git")


def test_names_are_resolved_and_every_address_must_be_public():
    def resolver(*addresses):
        return lambda host, port: [(2, 1, 6, "", (a, 0)) for a in addresses]

    refuse_private_host("https://example.com/x.git", resolve=resolver("93.184.215.14"))
    with pytest.raises(PermissionError, match="10.0.0.7"):
        refuse_private_host("https://example.com/x.git",
                            resolve=resolver("93.184.215.14", "10.0.0.7"))
    with pytest.raises(ValueError, match="cannot resolve"):
        refuse_private_host("https://nowhere.invalid/x.git",
                            resolve=lambda host, port: (_ for _ in ()).throw(OSError("no")))
