"""The Colab notebook: its setup cells run headless against this checkout, then the app
it would launch (share tunnel off) answers on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.helpers.server_process import (
    NO_INTERNET,
    ROOT,
    ServerProcess,
    free_port,
    wait_until_answering,
)

NOTEBOOK = ROOT / "notebooks" / "easel_colab.ipynb"


def cells(tag: str) -> list[str]:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in notebook["cells"]
            if c["cell_type"] == "code" and tag in c["metadata"].get("tags", [])]


def test_notebook_has_setup_cells_and_a_share_launch_cell():
    setup, launch = cells("setup"), cells("launch")
    assert len(setup) == 3 and len(launch) == 1
    assert all("!" not in line.lstrip()[:1] for cell in setup for line in cell.splitlines())
    assert '"EASEL_SHARE", "1"' in setup[0]  # --share unless turned off
    assert "--share" in setup[-1] and "LAUNCH_COMMAND" in launch[0]


@pytest.mark.slow
def test_setup_cells_run_headless_and_the_app_answers(tmp_path):
    target, port = tmp_path / "easel", free_port()
    script = "\n\n".join(cells("setup")) + "\nprint('LAUNCH=' + json.dumps(LAUNCH_COMMAND))\n"
    env = {**os.environ, "EASEL_SOURCE": str(ROOT), "EASEL_DIR": str(target),
           "EASEL_PYTHON": sys.executable, "EASEL_SHARE": "0",
           "EASEL_FLAGS": f"--api --port {port} --data-dir {tmp_path / 'data'}"}
    done = subprocess.run([sys.executable, "-c", "import json\n" + script], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Easel is set up" in done.stdout
    command = json.loads(done.stdout.split("LAUNCH=")[1].splitlines()[0])
    assert "--share" not in command and (target / "launch.py").is_file()
    assert not (target / ".git").exists() and not (target / ".venv").exists()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=target, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **NO_INTERNET, "EASEL_NO_VENV": "1"})
    server = ServerProcess(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        wait_until_answering(server, timeout=300)
        assert httpx.get(server.url + "/", timeout=30).status_code == 200
        assert httpx.get(server.url + "/sdapi/v1/samplers", timeout=30).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "public URL" not in server.log()
