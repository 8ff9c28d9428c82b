"""Cluster mode (Ray Serve) against the single-process server: throughput and the latency
the Ray path adds per request (issue 19).

    PYTHONPATH=. .venv/bin/python bench/bench_cluster.py [--requests 32] [--steps 20] \
        [--concurrency 8] [--repeats 20] [--json PATH]
    PYTHONPATH=. .venv/bin/python bench/bench_cluster.py --quick   # ~2 min (4 starts): checks it
    PYTHONPATH=. .venv/bin/python bench/bench_cluster.py --gpu     # one GPU per replica

Each configuration is a fresh `launch.py --nowebui` subprocess on a free port with its own
temporary data directory, serving the shipped demo model (models/Stable-diffusion/
easel-demo.safetensors, 64x64 native). CPU configurations:

* plain, 2 threads: the single-process server (one job at a time on its queue), torch on
  2 threads (`OMP_NUM_THREADS` / `MKL_NUM_THREADS`: the app has no thread flag). This is
  the reference: what a user of the 2-core machine gets without cluster mode.
* plain, 1 thread: the same on 1 thread, the baseline of the added latency.
* cluster, 1 replica x 1 thread: `--ray --replicas 1 --replica-threads 1`.
* cluster, 2 replicas x 1 thread: `--ray --replicas 2 --replica-threads 1`.

With `--gpu`: the plain server on its GPU, the cluster with 1 replica, and the cluster
with one replica per visible GPU (`--replicas <GPUs>`, no thread flags).

Each server is warmed up (`replicas` concurrent 1-step requests, twice, so every replica
has loaded the model), then measured:

* throughput: `--requests` txt2img requests (distinct seeds, `--steps`, Euler a) sent by
  `--concurrency` client threads; requests / wall second.
* latency: `--repeats` sequential 1-step requests on the idle server; the median. The
  added latency of the Ray path is the cluster-1-replica median minus the
  plain-1-thread median (the same work on one thread each; target <= 50 ms).

Targets (issue 19): 2 replicas x 1 thread >= 1.5x 1 replica x 1 thread on 2 cores, where
Ray's own processes share the cores (a bare Ray Serve deployment of two replicas doing
1 s of CPU work per request measured 1.59x there: 8.02 s vs 5.03 s for 8 requests).
After each server stops, no Ray process (raylet, gcs_server) it started may be left.
Prints a table, then the results as JSON on the last line (also to `--json PATH`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.extras import require_test_extras  # noqa: E402

require_test_extras(__file__, "httpx")
import httpx  # noqa: E402

CKPT_DIR = ROOT / "models" / "Stable-diffusion"
OFFLINE_ENV = {"EASEL_NO_VENV": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "GRADIO_ANALYTICS_ENABLED": "False"}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
RAY_DAEMONS = ("raylet", "gcs_server")  # what must not outlive the ingress (ps names)
READY_S = 600  # a cold start on a busy 2-core machine: imports, Ray, the replicas
STOP_S = 60  # SIGINT to exit: uvicorn's grace, then Serve and Ray shut down
REQUEST_S = 900  # one request, queued behind the others of a throughput run


@dataclass(frozen=True)
class Config:
    """One server to measure: its name, extra flags, torch threads (plain) and replicas."""

    name: str
    flags: tuple[str, ...] = ()
    threads: int | None = None  # plain server: OMP / MKL threads; None: the app's default
    replicas: int = 1


def cpu_configs() -> list[Config]:
    return [
        Config("plain, 2 threads", threads=2),
        Config("plain, 1 thread", threads=1),
        Config("cluster, 1 replica x 1 thread", ("--ray", "--replicas", "1",
                                                 "--replica-threads", "1")),
        Config("cluster, 2 replicas x 1 thread", ("--ray", "--replicas", "2",
                                                  "--replica-threads", "1"), replicas=2),
    ]


def gpu_configs(gpus: int) -> list[Config]:
    """The plain server on its GPU, and clusters of one GPU per replica."""
    configs = [Config("plain, 1 GPU"),
               Config("cluster, 1 replica x 1 GPU", ("--ray", "--replicas", "1"))]
    if gpus > 1:
        configs.append(Config(f"cluster, {gpus} replicas x 1 GPU",
                              ("--ray", "--replicas", str(gpus)), replicas=gpus))
    return configs


def count_gpus() -> int:
    """Visible CUDA devices, asked in a subprocess so this process never initialises CUDA."""
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_processes(pid: int) -> list[str]:
    """`pid command` of the processes the server `pid` left: those in its session (it is
    started in a new one, and Ray's daemons and workers stay in it) and any Ray daemon
    of the Ray session it started (Ray names the session directory after its driver)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid=,args="], capture_output=True,
                         text=True)
    rows = []
    for line in out.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or int(parts[0]) == pid:
            continue
        ours = parts[1] == str(pid) or (f"_{pid}/" in parts[2] and any(
            daemon in parts[2] for daemon in RAY_DAEMONS))
        if ours:
            rows.append(f"{parts[0]} {parts[2]}"[:160])
    return rows


def payload(seed: int, steps: int, size: int) -> dict:
    return {"prompt": "a lighthouse on a cliff at dusk", "steps": steps, "width": size,
            "height": size, "seed": seed, "sampler_name": "Euler a"}


@dataclass
class Server:
    """A `launch.py --nowebui` subprocess in its own session (so a Ctrl+C of the bench
    reaches it only through `stop`), logging to a file in its data directory."""

    config: Config
    size: int
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    leftovers: list[str] = field(default_factory=list)

    def start(self, data_dir: Path) -> None:
        env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT)}
        for name in THREAD_ENV:
            env.pop(name, None)
            if self.config.threads:
                env[name] = str(self.config.threads)
        self.log_path = data_dir / "server.log"
        command = [sys.executable, "launch.py", "--nowebui", "--port", str(self.port),
                   "--data-dir", str(data_dir), "--ckpt-dir", str(CKPT_DIR),
                   *self.config.flags]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                                   timeout=httpx.Timeout(REQUEST_S, connect=10),
                                   limits=httpx.Limits(max_connections=64))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def txt2img(self, seed: int, steps: int) -> float:
        """One request; its seconds. Raises on anything but 200 with one image."""
        started = time.perf_counter()
        response = self.client.post("/sdapi/v1/txt2img", json=payload(seed, steps, self.size))
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or len(response.json().get("images") or []) != 1:
            raise RuntimeError(f"{self.config.name}: txt2img answered {response.status_code}:"
                               f" {response.text[:300]}")
        return elapsed

    def wait_ready(self, deadline_s: float = READY_S) -> float:
        """Seconds until a 1-step txt2img succeeds (cluster mode: it waits for the
        replicas); fails early when the server exits."""
        started = time.monotonic()
        while time.monotonic() - started < deadline_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.config.name}: the server exited with "
                                   f"{self.process.returncode}:\n{self.log_tail()}")
            try:
                self.txt2img(seed=0, steps=1)
                return time.monotonic() - started
            except httpx.TransportError:  # not listening yet
                time.sleep(0.5)
        raise RuntimeError(f"{self.config.name}: not ready within {deadline_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        """SIGINT, wait, SIGKILL the session on timeout; then note the processes it
        started that are still alive (`server_processes`)."""
        if self.process is None:
            return
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.leftovers.append(f"server {self.process.pid} ignored SIGINT for "
                                      f"{STOP_S} s: killed")
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
        time.sleep(2)  # Ray's daemons exit just after the driver
        self.leftovers += [f"still running: {row}"
                           for row in server_processes(self.process.pid)]


def warm_up(server: Server, rounds: int = 2) -> None:
    """`replicas` concurrent 1-step requests, `rounds` times: each replica loads the model."""
    with ThreadPoolExecutor(server.config.replicas) as pool:
        for round_ in range(rounds):
            seeds = [1000 + round_ * 100 + i for i in range(server.config.replicas)]
            list(pool.map(lambda seed: server.txt2img(seed, steps=1), seeds))


def throughput(server: Server, requests: int, steps: int, concurrency: int) -> dict:
    """`requests` requests of `steps` steps from `concurrency` threads; requests / s."""
    seeds = range(1, requests + 1)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda seed: server.txt2img(seed, steps), seeds))
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 3), "req_per_s": round(requests / wall, 4),
            "mean_request_s": round(statistics.mean(latencies), 3)}


def idle_latency(server: Server, repeats: int) -> float:
    """Median ms of `repeats` sequential 1-step requests on the idle server."""
    times = [server.txt2img(seed=5000 + i, steps=1) for i in range(repeats)]
    return round(statistics.median(times) * 1000, 1)


def measure(config: Config, options: argparse.Namespace) -> dict:
    """Start, warm up, measure and stop one configuration."""
    with tempfile.TemporaryDirectory(prefix="easel-bench-cluster-") as data_dir:
        server = Server(config, size=options.size)
        print(f"--- {config.name}: starting on port {server.port}", file=sys.stderr, flush=True)
        try:
            server.start(Path(data_dir))
            ready_s = server.wait_ready()
            warm_up(server)
            row = {"config": config.name, "replicas": config.replicas,
                   "threads": config.threads, "ready_s": round(ready_s, 1),
                   **throughput(server, options.requests, options.steps, options.concurrency),
                   "latency_ms": idle_latency(server, options.repeats)}
        finally:
            server.stop()
        row["leftovers"] = server.leftovers
        for line in server.leftovers:
            print(f"WARNING {config.name}: {line}", file=sys.stderr, flush=True)
        print(f"--- {config.name}: {row}", file=sys.stderr, flush=True)
        return row


def summary(rows: list[dict], gpu: bool) -> dict:
    """The ratios and the added latency the issue asks for."""
    by_name = {row["config"]: row for row in rows}
    if gpu:
        plain, one = by_name["plain, 1 GPU"], by_name["cluster, 1 replica x 1 GPU"]
        many = rows[-1]
        latency_base = plain
    else:
        plain = by_name["plain, 2 threads"]
        one, many = by_name["cluster, 1 replica x 1 thread"], by_name[
            "cluster, 2 replicas x 1 thread"]
        latency_base = by_name["plain, 1 thread"]
    return {
        "many_over_one_replica": round(many["req_per_s"] / one["req_per_s"], 3),
        "many_over_plain": round(many["req_per_s"] / plain["req_per_s"], 3),
        "added_latency_ms": round(one["latency_ms"] - latency_base["latency_ms"], 1),
        "targets": {"many_over_one_replica": ">= 1.5 (2 replicas, 2 cores)",
                    "added_latency_ms": "<= 50"},
    }


def print_table(rows: list[dict], result: dict) -> None:
    print(f"{'configuration':34} {'req/s':>8} {'wall s':>8} {'idle 1-step ms':>15}")
    for row in rows:
        print(f"{row['config']:34} {row['req_per_s']:8.3f} {row['wall_s']:8.2f} "
              f"{row['latency_ms']:15.1f}")
    print(f"{rows[-1]['config']} / 1 replica: {result['many_over_one_replica']:.2f}x "
          "(target >= 1.5x)")
    print(f"{rows[-1]['config']} / {rows[0]['config']}: {result['many_over_plain']:.2f}x")
    print(f"added latency of the Ray path per request: {result['added_latency_ms']:.1f} ms "
          "(target <= 50 ms)")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--repeats", type=int, default=20, help="idle 1-step requests")
    parser.add_argument("--size", type=int, default=64, help="width = height")
    parser.add_argument("--quick", action="store_true",
                        help="4 requests of 4 steps, 3 latency repeats: checks the script")
    parser.add_argument("--gpu", action="store_true", help="one GPU per replica")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    options = parser.parse_args(argv)
    if options.quick:
        options.requests, options.steps, options.repeats = 4, 4, 3
        options.concurrency = min(options.concurrency, 4)
    return options


def main(argv: list[str] | None = None) -> dict:
    options = parse(argv)
    if options.gpu:
        gpus = count_gpus()
        if not gpus:
            raise SystemExit("--gpu: no CUDA device is visible")
        configs = gpu_configs(gpus)
        # Keep every GPU busy with a queue behind it: one request each is not throughput.
        options.concurrency = max(options.concurrency, 2 * gpus)
    else:
        configs = cpu_configs()
    rows = [measure(config, options) for config in configs]
    result = {"options": {k: v for k, v in vars(options).items() if k != "json"},
              "load_average": os.getloadavg(), "rows": rows,
              **summary(rows, options.gpu)}
    print_table(rows, result)
    if options.json:
        options.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
