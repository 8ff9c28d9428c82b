"""Canny edge detection in NumPy/SciPy, for the "canny" preprocessor.

J. Canny (1986), "A Computational Approach to Edge Detection": smooth with a Gaussian,
take the gradient (Sobel), keep only pixels that are local maxima of the gradient
magnitude across the edge (non-maximum suppression), then hysteresis: pixels above
`high` are edges, pixels above `low` are edges only when connected to one above
`high`. Magnitudes are L1 (|gx| + |gy|) of the unnormalised 3x3 Sobel on 0..255 values,
the scale OpenCV's `Canny(image, low, high)` thresholds use, so the ControlNet
extension's defaults (100, 200) mean the same; a colour image takes, per pixel, the
channel with the strongest gradient. We smooth with a small Gaussian first
(sigma 1 by default); OpenCV's Canny does not, which makes ours slightly less
sensitive to single-pixel noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Direction bins of the gradient angle (degrees, modulo 180) -> the two neighbours
# along the gradient, as (rows up, columns right).
_NEIGHBOURS = {0: ((0, 1), (0, -1)), 45: ((1, 1), (-1, -1)),
               90: ((1, 0), (-1, 0)), 135: ((1, -1), (-1, 1))}


def _gradients(image: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (gx, gy) of the channel with the largest L1 gradient magnitude."""
    channels = image.astype(np.float32)
    if channels.ndim == 2:
        channels = channels[..., None]
    if sigma > 0:
        channels = ndimage.gaussian_filter(channels, sigma=(sigma, sigma, 0), mode="nearest")
    gx = ndimage.sobel(channels, axis=1, mode="nearest")
    gy = ndimage.sobel(channels, axis=0, mode="nearest")
    best = np.argmax(np.abs(gx) + np.abs(gy), axis=2)[..., None]
    return (np.take_along_axis(gx, best, axis=2)[..., 0],
            np.take_along_axis(gy, best, axis=2)[..., 0])


def _shift(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """array[y + dy, x + dx] at (y, x), zero outside."""
    out = np.zeros_like(array)
    h, w = array.shape
    out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        array[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def non_max_suppression(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Magnitude where a pixel is a maximum along its gradient direction, else 0."""
    # Image rows grow downwards, so the angle uses -gy for counter-clockwise degrees.
    angle = np.rad2deg(np.arctan2(-gy, gx)) % 180.0
    bins = (np.round(angle / 45.0).astype(int) % 4) * 45
    keep = np.zeros(magnitude.shape, dtype=bool)
    for direction, ((ay, ax), (by, bx)) in _NEIGHBOURS.items():
        here = bins == direction
        # The neighbours across the edge: at +/- the gradient direction.
        a = _shift(magnitude, -ay, ax)
        b = _shift(magnitude, -by, bx)
        keep |= here & (magnitude >= a) & (magnitude > b)
    return np.where(keep, magnitude, 0.0)


def hysteresis(strength: np.ndarray, low: float, high: float) -> np.ndarray:
    """Pixels >= low that are 8-connected to a pixel >= high."""
    weak = strength >= low
    labels, count = ndimage.label(weak, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros(strength.shape, dtype=bool)
    strong_labels = np.unique(labels[strength >= high])
    return np.isin(labels, strong_labels[strong_labels > 0])


def canny(image: np.ndarray, low: float = 100.0, high: float = 200.0,
          *, sigma: float = 1.0) -> np.ndarray:
    """Edges of an (H, W) or (H, W, C) 0..255 image as an (H, W) bool map."""
    if low > high:
        low, high = high, low
    gx, gy = _gradients(image, sigma)
    magnitude = np.abs(gx) + np.abs(gy)
    return hysteresis(non_max_suppression(magnitude, gx, gy), low, high)
