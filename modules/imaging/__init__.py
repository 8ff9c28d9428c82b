"""Pictures as files and pixels: saving, grids, resizing, masks, colour correction.

`save.py` writes numbered files with embedded infotext and reads it back (PNG text,
EXIF, A1111's and NovelAI's formats); `grid.py` / `grid_labels.py` paste images into
(labelled) grids; `resize.py` has A1111's resize modes; `masks.py` prepares inpainting
masks; `color_correction.py` keeps img2img's colours; `decode.py` opens a client's
picture only when its header says it is under the pixel limit.
May import: PIL, numpy, torch and the top-level modules only; no other room.
"""
