"""What the HTTP API adds on top of the pipeline, in milliseconds.

Direct and HTTP calls alternate, and medians are compared, so that load from other
processes on a shared machine affects both sides alike.

Serves the API with uvicorn on 127.0.0.1 over a tiny random SD1 checkpoint and times:
a cheap route (GET /sdapi/v1/samplers) against calling the registry directly, and a
txt2img (64x64, few steps) through HTTP against driving `processing.txt2img` in
process. Run: `.venv/bin/python bench/bench_api_overhead.py [--repeats N] [--steps N]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.extras import require_test_extras  # noqa: E402

require_test_extras(__file__, "httpx")
import httpx  # noqa: E402

from modules.api.app import create_api_app  # noqa: E402
from modules.api.routes_listing import sampler_item  # noqa: E402
from modules.pipeline.params import Txt2ImgParams  # noqa: E402
from modules.pipeline.txt2img import txt2img  # noqa: E402
from modules.sampling.registry import SAMPLERS  # noqa: E402
from tests.helpers.api_runtime import make_runtime  # noqa: E402
from tests.helpers.live_server import serve  # noqa: E402


def paired_medians_ms(first, second, repeats: int) -> tuple[float, float]:
    """Median times of two functions run alternately, so load drift hits both alike."""
    first(), second()  # warm-up (model load, caches)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for function, bucket in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            function()
            bucket.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def run_direct(runtime, fields: dict) -> None:
    generator = txt2img(runtime, Txt2ImgParams(**fields, do_not_save_samples=True))
    try:
        while True:
            next(generator)
    except StopIteration:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    fields = {"prompt": "a red circle", "seed": 1, "width": 64, "height": 64,
              "steps": args.steps, "sampler_name": "Euler", "scheduler": "Automatic"}
    with tempfile.TemporaryDirectory() as data:
        runtime = make_runtime(Path(data))
        with serve(create_api_app(runtime)) as url, httpx.Client(base_url=url, timeout=120) as http:
            direct_list, http_list = paired_medians_ms(
                lambda: [sampler_item(s) for s in SAMPLERS],
                lambda: http.get("/sdapi/v1/samplers").raise_for_status(), args.repeats * 5)
            direct_gen, http_gen = paired_medians_ms(
                lambda: run_direct(runtime, fields),
                lambda: http.post("/sdapi/v1/txt2img", json=fields).raise_for_status(),
                args.repeats)
        runtime.jobs.stop()
    print(f"GET /sdapi/v1/samplers: {http_list:8.2f} ms over HTTP, {direct_list:8.3f} ms direct, "
          f"overhead {http_list - direct_list:7.2f} ms")
    print(f"txt2img 64x64 {args.steps} steps: {http_gen:8.2f} ms over HTTP, {direct_gen:8.2f} ms "
          f"direct, overhead {http_gen - direct_gen:7.2f} ms ({http_gen / direct_gen:.2f}x)")


if __name__ == "__main__":
    main()
