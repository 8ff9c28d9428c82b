raise RuntimeError("broken_import fails at import on purpose")
