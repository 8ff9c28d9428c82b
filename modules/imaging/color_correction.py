"""img2img colour correction: keep the result's colours close to the init image's.

A1111's `img2img_color_correction` matches the result's histograms to the init
image's in CIE L*a*b* and then keeps the luminosity of the uncorrected result
(docs/a1111-semantics.md, "Color correction"). Here, with numpy only: sRGB (D65) -> L*a*b*,
per-channel histogram matching by quantile mapping, and the result takes L* from the uncorrected
image and a*, b* from the matched one (a luminosity blend done in L*a*b*).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# sRGB (linear) -> XYZ, D65 white.
RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                       [0.212671, 0.715160, 0.072169],
                       [0.019334, 0.119193, 0.950227]])
WHITE_D65 = np.array([0.950456, 1.0, 1.088754])
EPSILON, KAPPA = 216 / 24389, 24389 / 27


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> L*a*b* float64 (L in [0, 100])."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ RGB_TO_XYZ.T / WHITE_D65
    f = np.where(xyz > EPSILON, np.cbrt(xyz), (KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """L*a*b* -> uint8 RGB."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f**3 > EPSILON, f**3, (116 * f - 16) / KAPPA) * WHITE_D65
    linear = np.clip(xyz @ np.linalg.inv(RGB_TO_XYZ).T, 0, 1)
    c = np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, linear * 12.92)
    return np.clip(np.rint(c * 255), 0, 255).astype(np.uint8)


def match_histogram(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map `source` values so their distribution equals `reference`'s (one channel)."""
    values, inverse, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(reference.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    ref_quantiles = np.cumsum(ref_counts) / reference.size
    return np.interp(quantiles, ref_quantiles, ref_values)[inverse].reshape(source.shape)


@dataclass(frozen=True)
class ColorCorrection:
    """The init image's L*a*b* pixels, the target of the histogram match."""

    target: np.ndarray

    @staticmethod
    def from_image(image: Image.Image) -> "ColorCorrection":
        return ColorCorrection(target=rgb_to_lab(np.asarray(image.convert("RGB"))))

    def apply(self, image: Image.Image) -> Image.Image:
        lab = rgb_to_lab(np.asarray(image.convert("RGB")))
        matched = np.stack([match_histogram(lab[..., c], self.target[..., c]) for c in range(3)],
                           axis=-1)
        matched[..., 0] = lab[..., 0]  # keep the result's luminosity
        return Image.fromarray(lab_to_rgb(matched), mode="RGB")
