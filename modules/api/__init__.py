"""The A1111-compatible HTTP API (`/sdapi/v1/*`) as FastAPI routes.

`schemas.py` declares requests and responses by hand to A1111's field names and
defaults; `convert.py` turns them into pipeline params; `routes_*.py` group the routes
(generation, listings, control: options, interrupt, models); `generation.py` queues
jobs; `security.py` checks Basic credentials and request limits; `auth.py` makes every
route of an app need a login once one is configured; `errors.py` maps our errors to status
codes; `extension_routes.py` lets extensions add routes; `app.py` assembles them.
May import: every backend room below it (pipeline, models, training, upscaling,
extensions, ...) and `app.cmd_args` for the auth flags; never `webui/` or gradio.
"""
