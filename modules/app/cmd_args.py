"""Command-line flags, named as A1111 users type them.

Flags may also come from the environment variable `COMMANDLINE_ARGS`, as in A1111's
`webui-user.sh`. Flags kept only for compatibility are accepted and ignored, so a
user's existing command line keeps working. Extensions add their own flags through
`preload.py` (`preload(parser)`), found from a first pass over the flags that locate
the extension folders (`--data-dir`, `--disable-*-extensions`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path

# Flags A1111 still accepts but that change nothing (kept so old command lines work).
COMPAT_NO_OPS = (
    "--max-batch-count", "--always-batch-cond-uncond", "--unload-gfpgan", "--deepdanbooru",
    "--show-negative-prompt", "--gradio-img2img-tool", "--gradio-inpaint-tool",
    "--gradio-queue", "--add-stop-route", "--enable-console-prompts", "--ngrok-region",
    "--skip-torch-cuda-test", "--skip-python-version-check", "--skip-version-check",
    "--skip-install", "--skip-prepare-environment", "--no-download-sd-model",
    "--do-not-download-clip", "--update-check", "--no-gradio-queue",
)

# A1111 flags for features Easel does not have: accepted so a command line keeps working,
# and named in a start-up warning (`unsupported_flags`) so nobody relies on them unknowingly.
UNSUPPORTED = {
    "--ngrok": "ngrok tunnels are not built in; use --share",
    "--ngrok-options": "ngrok tunnels are not built in; use --share",
    "--allow-code": "there is no Custom code script",
    "--use-ipex": "Intel XPU is not supported",
    "--config": "a checkpoint's architecture is read from the file; no .yaml is needed",
    "--api-server-stop": "there are no server-kill/restart/stop routes",
    "--test-server": "use the test suite (launch.py --run-tests)",
    "--dump-sysinfo": "not implemented", "--administrator": "not implemented",
    "--gradio-debug": "not implemented", "--ui-debug-mode": "not implemented",
    "--log-startup": "see bench/bench_startup.py", "--use-textbox-seed": "not implemented",
    "--no-prompt-history": "not implemented", "--gradio-allowed-path": "not needed",
    "--disable-console-progressbars": "not implemented", "--disable-tls-verify": "not needed",
    "--disable-model-loading-ram-optimization": "loading always streams tensor by tensor",
    "--unix-filenames-sanitization": "not implemented",
    "--filenames-max-length": "names are capped at 128 characters",
    "--freeze-settings-in-sections": "use --freeze-settings",
    "--freeze-specific-settings": "use --freeze-settings",
    "--opt-split-attention-v1": "use --opt-split-attention",
    "--opt-split-attention-invokeai": "use --opt-split-attention",
    "--sub-quad-q-chunk-size": "not tunable", "--sub-quad-kv-chunk-size": "not tunable",
    "--sub-quad-chunk-threshold": "not tunable", "--xformers-flash-attention": "not tunable",
    "--reinstall-torch": "launch.py keeps the installed torch",
    "--reinstall-xformers": "launch.py keeps the installed torch",
    "--update-all-extensions": "not implemented", "--lyco-dir-backcompat": "use --lora-dir",
    "--textual-inversion-templates-dir": "not implemented",
    "--localizations-dir": "not implemented",
    "--clip-models-path": "the interrogator reads models/clip/ and models/BLIP/ (--models-dir)",
}


def build_parser(*, preloads: Sequence[Callable[[argparse.ArgumentParser], None]] = (),
                 add_help: bool = True) -> argparse.ArgumentParser:
    """Easel's flags, then each extension's `preload(parser)` hook (its own flags)."""
    parser = argparse.ArgumentParser(prog="launch.py", add_help=add_help,
                                     description="Easel, a Stable Diffusion web UI")
    _server_flags(parser)
    _path_flags(parser)
    _performance_flags(parser)
    _cluster_flags(parser)
    for flag in (*COMPAT_NO_OPS, *UNSUPPORTED):
        parser.add_argument(flag, nargs="?", const=True, default=None, help=argparse.SUPPRESS)
    for preload in preloads:
        try:
            preload(parser)
        except (Exception, SystemExit) as error:  # a broken extension never stops the start
            print(f"Extension preload {getattr(preload, '__module__', preload)} failed: {error}")
    return parser


def extension_preloads(argv: list[str]) -> list[Callable]:
    """The `preload(parser)` hooks of the extensions the flags in `argv` would load."""
    from modules.extensions.registry import preload_hooks
    from modules.paths import ROOT

    known, _ = build_parser(add_help=False).parse_known_args(argv)
    roots = [(ROOT / "extensions", True)]
    data = Path(known.data_dir).resolve() if known.data_dir else ROOT
    if data != ROOT:
        roots.append((data / "extensions", False))
    return preload_hooks(roots, disable_all=known.disable_all_extensions,
                         disable_extra=known.disable_extra_extensions)


def _server_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--listen", action="store_true", help="bind 0.0.0.0 instead of 127.0.0.1")
    g.add_argument("--server-name", default=None, help="explicit host to bind")
    g.add_argument("--port", type=int, default=None, help="port (7860; 7861 with --nowebui)")
    g.add_argument("--share", action="store_true", help="create a public Gradio share link")
    g.add_argument("--api", action="store_true", help="also serve /sdapi/v1/* beside the UI")
    g.add_argument("--nowebui", action="store_true", help="serve the API only")
    g.add_argument("--api-auth", default=None, help='HTTP Basic auth for the API: "u:p[,u2:p2]"')
    g.add_argument("--api-log", action="store_true", help="log API requests")
    g.add_argument("--gradio-auth", default=None, help='login for the UI: "u:p[,u2:p2]"')
    g.add_argument("--gradio-auth-path", default=None, help="file with u:p lines for the UI")
    g.add_argument("--subpath", default=None, help="root path behind a reverse proxy")
    g.add_argument("--cors-allow-origins", default=None)
    g.add_argument("--cors-allow-origins-regex", default=None)
    g.add_argument("--allowed-hosts", default=None,
                   help="extra Host names the server answers to, comma-separated "
                        "(*.example.com for subdomains, * for any); others get 400")
    g.add_argument("--enable-insecure-extension-access", action="store_true")
    g.add_argument("--allow-private-extension-urls", action="store_true",
                   help="let Install from URL clone from private, loopback or link-local "
                        "addresses")
    g.add_argument("--disable-all-extensions", action="store_true")
    g.add_argument("--disable-extra-extensions", action="store_true")
    g.add_argument("--skip-load-model-at-start", action="store_true")
    g.add_argument("--autolaunch", action="store_true", help="open the browser on start")
    g.add_argument("--theme", choices=("light", "dark"), default=None)
    g.add_argument("--freeze-settings", action="store_true")
    g.add_argument("--hide-ui-dir-config", action="store_true",
                   help="refuse folder paths typed in the UI (batch from directory) and any "
                        "change to the output folder settings")
    g.add_argument("--allow-api-protected-settings", action="store_true",
                   help="let API clients change the URL-request policy and the output folders "
                        "(folders must stay inside the data directory)")
    g.add_argument("--no-hashing", action="store_true", help="do not sha256 checkpoints")
    g.add_argument("--disable-safe-unpickle", action="store_true",
                   help="accepted for compatibility; Easel always unpickles with an allow-list")
    g.add_argument("--disable-nan-check", action="store_true")
    g.add_argument("--max-body-mb", type=float, default=64.0, help="largest API request body")
    g.add_argument("--max-pixels-per-image", type=positive_int, default=4096 * 4096,
                   help="largest generated image (pixels; the hires-fix target counts)")
    g.add_argument("--max-pixels-per-request", type=positive_int, default=128 * 1024 * 1024,
                   help="pixels one request may generate (width x height x batch x count)")
    g.add_argument("--max-input-image-pixels", type=positive_int, default=8192 * 8192,
                   help="largest image a client may send (checked from its header)")
    g.add_argument("--tls-keyfile", default=None, help="serve HTTPS with this key")
    g.add_argument("--tls-certfile", default=None, help="serve HTTPS with this certificate")
    g.add_argument("--timeout-keep-alive", type=int, default=30, help="keep-alive seconds")
    g.add_argument("--loglevel", default=None, type=str.upper,
                   choices=("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"))


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0 (the pixel limits)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not above 0")
    return value


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    """Cluster mode on Ray Serve (docs/cluster.md); none of these imports Ray without --ray."""
    g = p.add_argument_group("cluster (Ray Serve)")
    g.add_argument("--ray", action="store_true",
                   help="generate on Ray Serve replicas (starts a local Ray instance)")
    g.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="join this Ray cluster instead of starting one (implies --ray)")
    g.add_argument("--replicas", type=positive_int, default=None,
                   help="replicas to start (default: 1 per GPU, else 1)")
    g.add_argument("--min-replicas", type=positive_int, default=None,
                   help="autoscaling floor (with --max-replicas)")
    g.add_argument("--max-replicas", type=positive_int, default=None,
                   help="autoscaling ceiling: Serve adds replicas while each has a job")
    g.add_argument("--replica-threads", type=positive_int, default=None,
                   help="CPU threads per replica (default: 1 on CPU replicas, torch's own "
                        "count on GPU replicas)")
    g.add_argument("--replica-device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: one GPU per replica if the cluster has GPUs when Easel "
                        "connects; cuda: always (GPU nodes may join later); cpu: never")
    g.add_argument("--replica-models", type=positive_int, default=1,
                   help="checkpoints each replica keeps loaded (its LRU)")
    g.add_argument("--ray-start-timeout", type=positive_int, default=600,
                   help="seconds to wait for the replicas to come up")


def _path_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("paths")
    g.add_argument("--data-dir", default=None, help="base folder for models, outputs, config")
    g.add_argument("--models-dir", default=None)
    g.add_argument("--ckpt", default=None, help="checkpoint to load at start")
    g.add_argument("--ckpt-dir", default=None)
    g.add_argument("--vae-dir", default=None)
    g.add_argument("--text-encoder-dir", default=None,
                   help="folder of separate text encoders (clip_l, clip_g, t5xxl) for SD3 / Flux")
    g.add_argument("--vae-path", default=None)
    g.add_argument("--lora-dir", default=None)
    g.add_argument("--embeddings-dir", default=None)
    g.add_argument("--hypernetwork-dir", default=None)
    g.add_argument("--controlnet-dir", default=None)
    g.add_argument("--esrgan-models-path", default=None)
    for name in ("realesrgan", "swinir", "dat", "hat", "scunet", "bsrgan", "gfpgan",
                 "codeformer"):
        g.add_argument(f"--{name}-models-path", default=None)
    g.add_argument("--upscaler-python", default=None,
                   help="interpreter of the separate upscaler environment that runs spandrel "
                        "models when spandrel cannot be imported by the app's torch "
                        "(default: .venv-upscalers/bin/python when it exists)")
    g.add_argument("--skip-upscaler-env", action="store_true",
                   help="launch.py: do not build .venv-upscalers (torch + torchvision pair "
                        "for spandrel) when the app's torch has no working torchvision")
    g.add_argument("--styles-file", default=None)
    g.add_argument("--ui-settings-file", default=None)
    g.add_argument("--ui-config-file", default=None)


def _performance_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("performance")
    g.add_argument("--xformers", action="store_true")
    g.add_argument("--force-enable-xformers", action="store_true")
    g.add_argument("--opt-sdp-attention", action="store_true")
    g.add_argument("--opt-sdp-no-mem-attention", action="store_true")
    g.add_argument("--opt-sub-quad-attention", action="store_true")
    g.add_argument("--opt-split-attention", action="store_true")
    g.add_argument("--disable-opt-split-attention", action="store_true")
    g.add_argument("--medvram", action="store_true")
    g.add_argument("--medvram-sdxl", action="store_true")
    g.add_argument("--lowvram", action="store_true")
    g.add_argument("--lowram", action="store_true")
    g.add_argument("--no-half", action="store_true")
    g.add_argument("--no-half-vae", action="store_true")
    g.add_argument("--precision", choices=("full", "half", "autocast"), default="autocast")
    g.add_argument("--upcast-sampling", action="store_true")
    g.add_argument("--opt-channelslast", action="store_true",
                   help="NHWC convolutions (always on for the CPU, where they are faster)")
    g.add_argument("--bf16", action="store_true",
                   help="bfloat16 weights: instead of fp16 on GPUs, of fp32 on CPUs")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net (slow first step per image size)")
    g.add_argument("--cpu-backend", choices=("auto", "eager", "openvino", "inductor"),
                   default="auto",
                   help="how the U-Net runs on a CPU: OpenVINO (auto's pick when installed), "
                        "eager PyTorch, or torch.compile's inductor")
    g.add_argument("--cpu-int8", action="store_true",
                   help="with the OpenVINO CPU backend: the U-Net's linear layers in int8 "
                        "(weight-only; less memory, see docs/performance.md for quality)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="CUDA only: compile the U-Net with CUDA graphs (reduce-overhead)")
    g.add_argument("--use-cpu", nargs="+", default=[])
    g.add_argument("--device-id", default=None)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse `argv` plus `COMMANDLINE_ARGS` (environment first, command line wins)."""
    from modules.app.os_support import split_command_line

    # Windows rules on Windows: backslashes in paths are kept (C:\models stays C:\models).
    extra = split_command_line(os.environ.get("COMMANDLINE_ARGS", ""))
    argv = [*extra, *argv]
    args = build_parser(preloads=extension_preloads(argv)).parse_args(argv)
    args.port_given = args.port is not None  # without --port the UI may move to a free one
    if args.port is None:
        args.port = 7861 if args.nowebui else 7860
    return args


def parse_auth(spec: str | None) -> dict[str, str]:
    """`"u:p,u2:p2"` -> {"u": "p", "u2": "p2"}; a malformed entry is an error naming it."""
    users: dict[str, str] = {}
    for entry in (spec or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user:
            raise SystemExit(f"auth entry {entry!r} must be user:password")
        users[user] = password
    return users


def unsupported_flags(args: argparse.Namespace) -> list[str]:
    """One line per given flag that Easel accepts but does not act on, with the reason."""
    return [f"{flag} has no effect: {reason}" for flag, reason in UNSUPPORTED.items()
            if getattr(args, flag.lstrip("-").replace("-", "_"), None) is not None]
