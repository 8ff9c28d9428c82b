"""What the process entry point needs from the web UI, importable without Gradio.

`launch.py` passes this module to `modules.app.cli.main` as the `frontend`, so the
backend never imports `webui/` (layers point one way: webui -> modules). Gradio itself
is imported only when the UI app is built, after the start-up page is already serving.
"""

from __future__ import annotations


def create_app(runtime):
    """The Gradio UI with the API beside it (see `webui.app.create_app`)."""
    from webui.app import create_app as create_ui_app

    return create_ui_app(runtime)


def share_hook(args):
    """The `--share` start-up hook (see `webui.share`)."""
    from webui.share import share_hook as make_share_hook

    return make_share_hook(args)
