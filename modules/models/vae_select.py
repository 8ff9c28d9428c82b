"""Which VAE a job decodes with: A1111's `sd_vae` setting and `--vae-path`.

Precedence (docs/a1111-semantics.md, "VAE choice"): `--vae-path`; the setting when it names a file
("None" means the checkpoint's own VAE); on "Automatic", a VAE "near the checkpoint" (a file in
the VAE folder, or `<stem>.vae.*` beside the checkpoint, whose name starts with the
checkpoint's stem); otherwise the checkpoint's own VAE. Names resolve inside the VAE
folder only; an unknown name is an error naming it (A1111 silently falls back).
"""

from __future__ import annotations

from pathlib import Path

from modules.models.errors import ModelLoadError
from modules.models.folders import walk_files
from modules.paths import VAE_SUFFIXES, inside

AUTOMATIC = "Automatic"
NONE = "None"


def list_vaes(vae_dir: Path, checkpoint_dirs: tuple[Path, ...] = ()) -> list[Path]:
    """VAE files in the VAE folder (recursive) and `*.vae.*` files beside checkpoints."""
    found = [p for p in walk_files(vae_dir, VAE_SUFFIXES) if p.suffix in VAE_SUFFIXES]
    for folder in checkpoint_dirs:
        found += [p for p in walk_files(folder, VAE_SUFFIXES)
                  if ".vae." in p.name and p.suffix in VAE_SUFFIXES]
    return found


def resolve_vae(setting: str, *, checkpoint_path: str, vae_dir: Path,
                checkpoint_dirs: tuple[Path, ...] = (), vae_path: str | None = None) -> Path | None:
    """The external VAE file for a job, or None for the checkpoint's own VAE."""
    if vae_path:
        path = Path(vae_path)
        if not path.is_file():
            raise ModelLoadError(vae_path, "--vae-path does not name a file")
        return path
    candidates = list_vaes(vae_dir, checkpoint_dirs)
    if setting == NONE:
        return None
    if setting and setting != AUTOMATIC:
        return _by_name(setting, candidates, vae_dir)
    stem = Path(checkpoint_path).name.split(".")[0]
    near = [p for p in candidates if p.name.startswith(stem)]
    return near[0] if near else None


def _by_name(name: str, candidates: list[Path], vae_dir: Path) -> Path:
    for path in candidates:
        if name in (path.name, path.stem, str(path.relative_to(vae_dir)) if inside(vae_dir, path)
                    else path.name):
            return path
    valid = ", ".join([AUTOMATIC, NONE, *(p.name for p in candidates)])
    raise ModelLoadError(name, f"no such VAE; choose one of: {valid}")
