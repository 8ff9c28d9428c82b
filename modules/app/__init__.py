"""The process itself: flags, start-up, serving, and first-run environment setup.

`cmd_args.py` parses A1111's command-line flags; `cli.py` turns them into a `Runtime`
and an app (the web UI comes in from above as a `Frontend`, so nothing here imports
`webui/`); `server.py` serves it with uvicorn (host, port, TLS, CORS, hooks), with
`hosts.py` checking the Host header (DNS rebinding);
`early_page.py` answers on the UI's socket before torch and Gradio load;
`bootstrap.py` / `bootstrap_upscalers.py` build `.venv` and the upscaler environment
with the standard library only (`launch.py` imports them before anything is installed),
installing what `pyproject.py` reads from pyproject.toml, the one dependency list.
May import: every backend room (it wires them); never `webui/` or gradio.
"""
