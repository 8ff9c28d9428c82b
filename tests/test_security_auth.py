"""Issue #17 items 3 and 4: every route needs credentials once any login is configured.

The route walk enumerates `app.routes` (included routers, the mounted Gradio app and
`/internal/*` included) and asks each one without credentials: only the explicit public
allow-list (`webui.login.PUBLIC_PATHS` / `PUBLIC_PREFIXES`, used only with the UI's own
login) may answer anything but 401.
"""

from __future__ import annotations

import base64
import re

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount
from starlette.websockets import WebSocketDisconnect

from modules.api.app import create_api_app
from modules.jobs import JobQueue
from tests.helpers.webui_runtime import make_runtime
from webui.app import create_app
from webui.login import PUBLIC_PATHS, PUBLIC_PREFIXES


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def flat_routes(routes, prefix: str = ""):
    """(path, methods) of every route, through mounts and included routers."""
    for route in routes:
        if isinstance(route, Mount):
            yield from flat_routes(route.routes, prefix + route.path)
        elif hasattr(route, "effective_route_contexts"):  # FastAPI's included router
            for context in route.effective_route_contexts():
                path = context.path or context.original_route.path
                yield prefix + path, getattr(context.original_route, "methods", None)
        else:
            yield prefix + route.path, getattr(route, "methods", None)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path) or "/"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def walk_unauthenticated(client: TestClient, app, *, public_allowed: bool) -> list[str]:
    """Every route asked without credentials; the ones that did not answer 401."""
    open_routes, asked = [], 0
    for path, methods in flat_routes(app.routes):
        url = concrete(path)
        if methods is None:  # a websocket route: the handshake must be refused
            with pytest.raises(WebSocketDisconnect), client.websocket_connect(url):
                pass
            continue
        for method in sorted(methods):
            asked += 1
            status = client.request(method, url).status_code
            if status != 401 and not (public_allowed and is_public(url)):
                open_routes.append(f"{method} {url} -> {status}")
    assert asked > 100  # the UI's and the API's routes were all found
    return open_routes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("auth-data")


def runtime_with(data, *flags):
    runtime = make_runtime(data, *flags, load=False)
    runtime.ready.set()
    return runtime


@pytest.fixture(scope="module")
def gradio_auth_app(data):
    runtime = runtime_with(data, "--api", "--gradio-auth", "ann:pw1")
    yield create_app(runtime)
    runtime.jobs.stop()


@pytest.fixture(scope="module")
def api_auth_app(data):
    runtime = runtime_with(data, "--api", "--api-auth", "bot:pw2")
    yield create_app(runtime)
    runtime.jobs.stop()


def test_every_route_of_the_ui_app_needs_the_ui_login(gradio_auth_app):
    client = TestClient(gradio_auth_app)
    assert walk_unauthenticated(client, gradio_auth_app, public_allowed=True) == []
    assert client.get("/").status_code == 200  # the login page itself is public
    assert client.post("/internal/progress", json={"id_task": "job-1"}).status_code == 401


def test_the_public_login_page_shows_no_api_info(gradio_auth_app):
    """Gradio embeds its API info (labels, defaults, checkpoint names) in the page."""
    client = TestClient(gradio_auth_app)
    for url in ("/", "/?all_endpoints=true"):
        page = client.get(url).text
        assert '"named_endpoints":{},"unnamed_endpoints":{}' in page, url
        assert "tiny.safetensors" not in page and '"label":"Width"' not in page, url


def test_every_route_needs_basic_auth_when_only_the_api_has_a_login(api_auth_app):
    client = TestClient(api_auth_app)
    assert walk_unauthenticated(client, api_auth_app, public_allowed=False) == []
    page = client.get("/")
    assert page.status_code == 401 and page.headers["www-authenticate"] == "Basic"
    assert client.get("/", headers=basic("bot", "pw2")).status_code == 200
    assert client.get("/config", headers=basic("bot", "pw2")).status_code == 200


def test_api_app_alone_has_no_public_route(data):
    runtime = runtime_with(data, "--nowebui", "--api-auth", "bot:pw2")
    app = create_api_app(runtime)
    client = TestClient(app)
    walked = list(flat_routes(app.routes))
    assert any(path == "/internal/progress" for path, _ in walked)
    assert any(path.startswith("/controlnet/") for path, _ in walked)  # extension routes
    open_routes = [f"{sorted(m)} {p}" for p, m in walked for method in sorted(m or ["GET"])
                   if client.request(method, concrete(p)).status_code != 401]
    assert open_routes == []
    progress = client.post("/internal/progress", json={"id_task": "job-1"},
                           headers=basic("bot", "pw2"))
    assert progress.status_code == 200
    runtime.jobs.stop()


def test_cors_preflight_is_answered_before_the_login_check(data):
    """Browsers send preflights without credentials: CORS sits outside the auth check."""
    from modules.app.cmd_args import parse_args
    from modules.app.server import add_server_middleware

    runtime = runtime_with(data, "--nowebui", "--api-auth", "bot:pw2")
    app = create_api_app(runtime)
    add_server_middleware(app, parse_args(["--api-auth", "bot:pw2",
                                           "--cors-allow-origins", "http://a.example"]))
    client = TestClient(app, base_url="http://127.0.0.1:7861")
    cors = {"Origin": "http://a.example"}
    preflight = client.options("/sdapi/v1/options", headers={
        **cors, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://a.example"
    assert client.get("/sdapi/v1/options", headers=cors).status_code == 401
    signed = client.get("/sdapi/v1/options", headers={**cors, **basic("bot", "pw2")})
    assert signed.status_code == 200
    runtime.jobs.stop()


def test_routes_added_later_are_covered_too(api_auth_app, gradio_auth_app):
    for app in (api_auth_app, gradio_auth_app):
        app.get("/sdapi/v1/added-later")(lambda: {"ok": True})
        assert TestClient(app).get("/sdapi/v1/added-later").status_code == 401


def test_gradio_session_opens_the_ui_and_its_logins_open_the_api(gradio_auth_app):
    """Item 4: with --gradio-auth and no --api-auth, the API takes the UI's logins."""
    client = TestClient(gradio_auth_app)
    assert client.get("/sdapi/v1/options").status_code == 401
    assert client.get("/sdapi/v1/options", headers=basic("ann", "pw1")).status_code == 200
    assert client.get("/sdapi/v1/options", headers=basic("ann", "nope")).status_code == 401
    assert client.post("/login", data={"username": "ann", "password": "pw1"}).status_code == 200
    assert client.get("/config").status_code == 200
    assert client.get("/gradio_api/info").status_code == 200
    assert client.get("/sdapi/v1/options").status_code == 401  # the API wants Basic


def test_separate_api_login_is_not_opened_by_the_ui_login(data):
    runtime = runtime_with(data, "--nowebui", "--gradio-auth", "ann:pw1", "--api-auth", "bot:pw2")
    client = TestClient(create_api_app(runtime))
    assert client.get("/sdapi/v1/options", headers=basic("ann", "pw1")).status_code == 401
    assert client.get("/sdapi/v1/options", headers=basic("bot", "pw2")).status_code == 200
    runtime.jobs.stop()


def test_api_alone_follows_the_ui_login_when_no_api_login_is_given(data):
    runtime = runtime_with(data, "--nowebui", "--gradio-auth", "ann:pw1")
    client = TestClient(create_api_app(runtime))
    assert client.post("/internal/progress", json={"id_task": "x"}).status_code == 401
    assert client.get("/sdapi/v1/options", headers=basic("ann", "pw1")).status_code == 200
    runtime.jobs.stop()


def _nothing():
    return
    yield


def test_job_ids_are_random_not_sequential():
    jobs = JobQueue()
    try:
        ids = [jobs.submit(_nothing).id for _ in range(3)]
    finally:
        jobs.stop()
    assert len(set(ids)) == 3
    assert not any(re.fullmatch(r"job-\d+", job_id) for job_id in ids)
    assert all(len(job_id) >= len("job-") + 20 for job_id in ids)
