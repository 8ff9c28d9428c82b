"""Outpainting mk2's fill: coloured noise whose statistics follow the picture's border.

Img2img keeps much of its starting picture, so a black or smeared border gives a flat
result. Outpainting mk2 therefore starts the new area from noise that already looks
like the picture nearby. This is our own construction of that idea:

1. statistics: the mean and standard deviation per channel of the known pixels in a
   band along the side being grown;
2. texture: Gaussian noise shaped in the frequency domain by `1 / f ** falloff`
   ("fall-off exponent": 0 keeps white noise, the finest detail; larger values give
   smoother, blotchier noise), normalised to unit variance;
3. colour: a mix of grey noise shared by the three channels and independent
   per-channel noise, `color_variation` being the share of the latter;
4. continuity: the new pixels start as the nearest edge pixel of the picture and fade
   to the band's mean colour across the new area, plus the scaled noise.

Known pixels are returned unchanged. The noise comes from a seeded generator, so
the fill (and the whole job) is reproducible.
"""

from __future__ import annotations

import numpy as np

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 of the known picture (exclusive ends)


def shaped_noise(height: int, width: int, *, falloff: float, color_variation: float,
                 rng: np.random.Generator) -> np.ndarray:
    """(height, width, 3) noise with a 1/f**falloff spectrum and unit variance."""
    white = rng.standard_normal((height, width, 3))
    grey = white.mean(axis=2, keepdims=True) * np.sqrt(3.0)
    mixed = color_variation * white + (1.0 - color_variation) * grey
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    frequency = np.sqrt(fx * fx + fy * fy)
    frequency[0, 0] = 1.0 / max(height, width)  # the lowest frequency there is
    gain = frequency ** -falloff
    gain[0, 0] = 0.0  # no DC: the mean comes from the picture
    shaped = np.fft.ifft2(np.fft.fft2(mixed, axes=(0, 1)) * gain[..., None], axes=(0, 1)).real
    deviation = shaped.std()
    return shaped / deviation if deviation > 0 else shaped


def border_statistics(image: np.ndarray, known: Box, band: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per channel of the known pixels within `band` of the known box's
    sides that touch the unknown area (the whole known box if no side does)."""
    x1, y1, x2, y2 = known
    height, width = image.shape[:2]
    pieces = []
    if x1 > 0:
        pieces.append(image[y1:y2, x1:min(x1 + band, x2)])
    if x2 < width:
        pieces.append(image[y1:y2, max(x2 - band, x1):x2])
    if y1 > 0:
        pieces.append(image[y1:min(y1 + band, y2), x1:x2])
    if y2 < height:
        pieces.append(image[max(y2 - band, y1):y2, x1:x2])
    if not pieces:
        pieces = [image[y1:y2, x1:x2]]
    pixels = np.concatenate([piece.reshape(-1, image.shape[2]) for piece in pieces])
    if len(pixels) == 0:
        return np.full(3, 0.5), np.full(3, 0.25)
    return pixels.mean(axis=0), pixels.std(axis=0)


def matched_noise_fill(image: np.ndarray, known: Box, *, falloff: float,
                       color_variation: float, rng: np.random.Generator,
                       band: int = 16) -> np.ndarray:
    """`image` (H, W, 3 floats in [0, 1]) with everything outside `known` filled."""
    x1, y1, x2, y2 = known
    height, width = image.shape[:2]
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"the known box {known} is empty")
    mean, std = border_statistics(image, known, band)
    ys = np.clip(np.arange(height), y1, y2 - 1)
    xs = np.clip(np.arange(width), x1, x2 - 1)
    edge = image[ys][:, xs]  # the nearest known pixel
    dy = np.maximum(y1 - np.arange(height), np.arange(height) - (y2 - 1)).clip(min=0)
    dx = np.maximum(x1 - np.arange(width), np.arange(width) - (x2 - 1)).clip(min=0)
    distance = np.maximum(dy[:, None], dx[None, :]).astype(np.float64)
    reach = max(1.0, float(distance.max()))
    fade = (distance / reach)[..., None]
    noise = shaped_noise(height, width, falloff=falloff, color_variation=color_variation,
                         rng=rng)
    filled = edge * (1.0 - fade) + mean * fade + noise * std
    out = np.clip(filled, 0.0, 1.0)
    out[y1:y2, x1:x2] = image[y1:y2, x1:x2]
    return out
