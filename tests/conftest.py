"""Test-wide settings: never touch the network, never phone home."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Most tests build a runtime from the flags; they run the U-Net eagerly, as they were
# written against, unless they name a backend. The OpenVINO backend (the CPU default
# outside the suite) has its own tests, which pass `--cpu-backend` on the command line
# (it wins over this) or clear this variable to see the real default.
os.environ.setdefault("COMMANDLINE_ARGS", "--cpu-backend eager")
