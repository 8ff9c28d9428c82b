"""Extensions: discovering, loading, enabling and installing them.

`registry.py` finds `extensions/<name>/` folders (built-in and installed), loads their
scripts into the `scripts/` machinery and keeps the `ExtensionRegistry` held on the
Runtime; `install.py` installs one from a git URL (the Extensions tab), `url_check.py`
refusing URLs on private networks.
May import: `scripts/` and the top-level modules; never `api/` or `webui/`.
"""
