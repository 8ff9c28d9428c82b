"""Start-up and server flags: the real `launch.py` process, and `modules.app.server` in process."""

from __future__ import annotations

import argparse
import logging
import socket

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modules.app.cmd_args import parse_args, unsupported_flags
from modules.app.server import ServeError, add_server_middleware, bind_host, choose_port, serve
from tests.helpers.server_process import DEMO_DIR, free_port, running_server

TXT2IMG = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 1,
           "sampler_name": "Euler a", "save_images": True}


@pytest.mark.slow
def test_server_serves_page_loads_model_in_background_and_share_fails_soft(tmp_path):
    with running_server(tmp_path, "--api", "--share", "--ckpt-dir", str(DEMO_DIR)) as server:
        page = httpx.get(server.url + "/", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        # the first generation waits for the background load, then uses the demo model
        answer = httpx.post(server.url + "/sdapi/v1/txt2img", json=TXT2IMG, timeout=600)
        assert answer.status_code == 200, answer.text
        assert "easel-demo" in answer.json()["info"]
        options = httpx.get(server.url + "/sdapi/v1/options", timeout=30).json()
        assert options["sd_model_checkpoint"].startswith("easel-demo")
        saved = list((tmp_path / "outputs" / "txt2img-images").rglob("*.png"))
        assert len(saved) == 1  # --data-dir holds the outputs
        log = server.log()
    assert "--share: no public link could be made" in log
    assert "Easel is still serving on http://127.0.0.1:" in log


@pytest.mark.slow
def test_nowebui_serves_the_api_alone_with_auth(tmp_path):
    with running_server(tmp_path, "--nowebui", "--listen", "--skip-load-model-at-start",
                        "--api-auth", "u:p", "--ngrok", "token") as server:
        assert httpx.get(server.url + "/", timeout=30).status_code == 401  # all behind auth
        assert httpx.get(server.url + "/", auth=("u", "p"), timeout=30).status_code == 404
        assert httpx.get(server.url + "/sdapi/v1/samplers", timeout=30).status_code == 401
        samplers = httpx.get(server.url + "/sdapi/v1/samplers", auth=("u", "p"), timeout=30)
        assert samplers.status_code == 200 and samplers.json()
        log = server.log()
    assert "--ngrok has no effect: ngrok tunnels are not built in; use --share" in log


@pytest.mark.slow
def test_gradio_auth_protects_the_page(tmp_path):
    with running_server(tmp_path, "--gradio-auth", "me:secret",
                        "--skip-load-model-at-start") as server:
        assert httpx.get(server.url + "/config", timeout=30).status_code == 401
        login = httpx.post(server.url + "/login", data={"username": "me", "password": "secret"},
                           timeout=30)
        assert login.status_code == 200
        assert httpx.get(server.url + "/config", cookies=login.cookies,
                         timeout=30).status_code == 200


def busy_socket() -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def test_explicit_port_in_use_is_a_clear_error():
    with busy_socket() as holder:
        port = holder.getsockname()[1]
        args = parse_args(["--port", str(port)])
        with pytest.raises(ServeError, match=f"--port {port}: the port is already in use"):
            choose_port("127.0.0.1", args)


def test_default_port_moves_to_the_next_free_one():
    with busy_socket() as holder:
        port = holder.getsockname()[1]
        args = argparse.Namespace(port=port, port_given=False, nowebui=False)
        assert choose_port("127.0.0.1", args) > port


def test_host_follows_a1111_precedence():
    assert bind_host(parse_args([])) == "127.0.0.1"
    assert bind_host(parse_args(["--listen"])) == "0.0.0.0"
    assert bind_host(parse_args(["--listen", "--server-name", "10.0.0.5"])) == "10.0.0.5"
    assert parse_args(["--nowebui"]).port == 7861 and parse_args([]).port == 7860


def test_tls_files_must_come_in_pairs_and_exist(tmp_path):
    with pytest.raises(ServeError, match="go together"):
        serve(FastAPI(), parse_args(["--tls-keyfile", "k.pem", "--port", "0"]))
    with pytest.raises(ServeError, match="--tls-keyfile .*missing.pem"):
        serve(FastAPI(), parse_args(["--tls-keyfile", str(tmp_path / "missing.pem"),
                                     "--tls-certfile", str(tmp_path / "missing.pem"),
                                     "--port", "0"]))


def test_cors_and_api_log(caplog):
    app = FastAPI()
    app.get("/sdapi/v1/ping")(lambda: {"ok": True})
    add_server_middleware(app, parse_args(["--cors-allow-origins", "http://a.example",
                                           "--api-log"]))
    client = TestClient(app, base_url="http://127.0.0.1")  # a Host the server serves
    with caplog.at_level(logging.INFO, logger="easel"):
        answer = client.get("/sdapi/v1/ping", headers={"Origin": "http://a.example"})
    assert answer.headers["access-control-allow-origin"] == "http://a.example"
    assert any("API testclient GET /sdapi/v1/ping 200" in r.getMessage() for r in caplog.records)
    other = client.get("/sdapi/v1/ping", headers={"Origin": "http://b.example"})
    assert "access-control-allow-origin" not in other.headers


def test_unsupported_flags_are_named_not_silently_ignored():
    args = parse_args(["--allow-code", "--config", "x.yaml", "--skip-install"])
    assert unsupported_flags(args) == [
        "--allow-code has no effect: there is no Custom code script",
        "--config has no effect: a checkpoint's architecture is read from the file; "
        "no .yaml is needed"]


def test_the_start_up_page_answers_then_hands_its_socket_over(tmp_path):
    """modules.app.early_page: placeholder page and 503 API answers, then the socket stays open."""
    from modules.app.early_page import STARTING_HEADER, EarlyPage, bind_listening_socket

    port = free_port()
    early = EarlyPage(bind_listening_socket("127.0.0.1", port)).start()
    page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert page.status_code == 200 and "Easel is starting" in page.text
    assert page.headers[STARTING_HEADER] == "1" and 'http-equiv="refresh"' in page.text
    api = httpx.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", json={}, timeout=10)
    assert api.status_code == 503 and api.json()["detail"] == "Easel is starting"
    sock = early.stop()
    # Still listening: a new connection is queued for whoever serves next (uvicorn).
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    sock.close()


@pytest.mark.slow
def test_launch_answers_from_the_start_up_page_until_the_ui_is_built(tmp_path):
    """From its first answer until the UI, the port never refuses a connection."""
    import subprocess
    import time

    from modules.app.early_page import STARTING_HEADER
    from tests.helpers.server_process import launch_command

    port = free_port()
    process = subprocess.Popen(launch_command("--port", str(port), "--data-dir", str(tmp_path),
                                              "--skip-load-model-at-start"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        answers = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
                answers.append(STARTING_HEADER in answer.headers)
                if not answers[-1]:
                    break
            except httpx.TransportError:
                assert not answers, "the port refused a connection after it had answered"
            time.sleep(0.05)
        assert answers and answers[-1] is False, "the UI never came up"
        assert answers[0] is True, "the start-up page should answer before the UI is built"
    finally:
        process.terminate()
        process.wait(timeout=30)
