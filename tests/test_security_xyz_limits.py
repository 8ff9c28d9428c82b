"""An X/Y/Z plot is bounded before any of its cells is built (issue #17, bounded work).

A range whose step is lost in float rounding never ended, huge ranges built millions of
values, three long axes built 10⁹ cell requests before the cell limit was checked, and a
plot of 1024 cells of a large size passed every per-cell pixel check.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from modules.api.app import create_api_app
from modules.scripts.builtin.xyz_axes import MAX_AXIS_VALUES, find_axis, parse_values
from tests.helpers.api_runtime import make_runtime


@pytest.mark.parametrize("axis, text", [
    ("CFG Scale", "1-2 (0.00000000000000001)"),  # the step vanishes in rounding
    ("Seed", "1-3000000"),
    ("CFG Scale", "0-1 [3000000]"),
    ("Seed", ", ".join(["1-1000"] * 3)),  # several ranges together
])
def test_ranges_over_the_limit_are_refused_before_they_are_built(axis, text):
    with pytest.raises(ValueError, match="X/Y/Z plot"):
        parse_values(find_axis(axis), text)


def test_a_range_at_the_limit_is_accepted():
    assert len(parse_values(find_axis("Seed"), f"1-{MAX_AXIS_VALUES}")) == MAX_AXIS_VALUES


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    runtime = make_runtime(tmp_path_factory.mktemp("xyz-limits"))
    yield TestClient(create_api_app(runtime))
    runtime.jobs.stop()


def plot(client, x: str, y: str, z: str, **fields):
    args = ["Seed", x, [], "Seed", y, [], "Seed", z, []]
    body = {"width": 64, "height": 64, "steps": 1, "script_name": "x/y/z plot",
            "script_args": args, **fields}
    return client.post("/sdapi/v1/txt2img", json=body)


def test_three_long_axes_are_refused_by_their_product(client):
    response = plot(client, "1-1000", "1-1000", "1-1000")
    assert response.status_code == 422, response.text
    assert "1000000000 cells" in response.text


def test_a_plot_is_one_request_for_the_pixel_budget(client):
    response = plot(client, "1-32", "1-32", "1", width=2048, height=2048)
    assert response.status_code == 422, response.text
    assert "script_args" in response.text and "max-pixels-per-request" in response.text


def test_a_small_plot_still_runs(client):
    response = plot(client, "1-2", "1", "1")
    assert response.status_code == 200, response.text
