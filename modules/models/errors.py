"""The one exception type for model files that cannot be used, with the file and the reason.

Every reader in `modules/models/` (safetensors, pickles, diffusers folders, detection)
raises `ModelLoadError` so that callers (the model manager, the API) can report
`<file>: <reason>` and keep the previous model serving.
"""

from __future__ import annotations

import os


class ModelLoadError(Exception):
    """A model file or folder that cannot be loaded; `str()` is `"<path>: <reason>"`."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason

    def __reduce__(self):  # rebuilt from its fields when sent between processes (cluster)
        return type(self), (self.path, self.reason)


class UnsafePickleError(ModelLoadError):
    """A pickled file that asks for something outside the allow-list."""
