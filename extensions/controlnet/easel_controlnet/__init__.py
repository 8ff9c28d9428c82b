"""The built-in ControlNet extension's own modules (units, preprocessors, injection, API).

Imported by `extensions/controlnet/scripts/controlnet.py`; the network and its file
loading live in `modules/nn/controlnet.py` and `modules/models/controlnet_files.py`.
"""
