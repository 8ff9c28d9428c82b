"""A1111 compatibility name: `modules.images` (saving and reading generated images).

A1111 extensions call `modules.images.save_image` and read infotext through this name;
in Easel it lives in `modules/imaging/` (`save.py`, `grid.py`). This module only
re-exports it; see docs/compatibility.md.
"""

from modules.imaging.grid import image_grid
from modules.imaging.save import (
    FilenameFields,
    read_image_info,
    read_infotext,
    sanitize_filename_part,
    save_image,
)

__all__ = [
    "FilenameFields", "image_grid", "read_image_info", "read_infotext",
    "sanitize_filename_part", "save_image",
]
