"""Face alignment and paste-back: from a detected face to a 512x512 crop and back.

Face restoration networks (GFPGAN, CodeFormer, RestoreFormer) were trained on FFHQ
crops: 512x512 pictures in which the eyes, the nose tip and the mouth corners sit at
fixed places (the five-point template below, the one facexlib and GFPGAN align to).
We map the landmarks we have onto that template with a similarity transform (rotation,
uniform scale, translation; least squares, exact for two points), warp the picture
into the crop, and after restoration warp the result back with the inverse transform.

The paste-back blends through a feathered mask made in crop space (1 inside, ramping
to 0 over `FEATHER` px at the crop's edges) and warped back with the same inverse
transform, so it is exactly 0 wherever the crop does not reach: pixels outside the
pasted region (`paste_face` returns its bounding box) are left exactly as they were.
"""

from __future__ import annotations

import numpy as np

CROP = 512
# (x, y) in the 512x512 FFHQ crop: left eye, right eye (as seen in the picture), nose
# tip, left and right mouth corner; the template facexlib's FaceRestoreHelper uses.
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936],
                          [256.63416, 314.01935], [201.26117, 371.41043],
                          [313.08905, 371.15118]], dtype=np.float64)
# What the crop shows where the picture does not reach (facexlib's grey).
BORDER_VALUE = (135, 133, 132)
FEATHER = 24


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity matrix that maps `source` points onto `target` points (N >= 2)
    with the least squared error. Points as complex numbers: target = a * source + b."""
    src = source[:, 0] + 1j * source[:, 1]
    dst = target[:, 0] + 1j * target[:, 1]
    src_c, dst_c = src - src.mean(), dst - dst.mean()
    a = np.vdot(src_c, dst_c) / np.vdot(src_c, src_c).real  # vdot conjugates its first
    b = dst.mean() - a * src.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def align_matrix(landmarks: np.ndarray) -> np.ndarray:
    """The picture -> crop transform for `landmarks` (the first k template points)."""
    points = np.asarray(landmarks, dtype=np.float64)
    return similarity(points, FFHQ_TEMPLATE[:len(points)])


def warp_crop(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The 512x512 aligned crop of an RGB uint8 picture."""
    import cv2

    return cv2.warpAffine(image, matrix, (CROP, CROP), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_VALUE)


def feather_mask(size: int = CROP, feather: int = FEATHER) -> np.ndarray:
    """1 inside, a linear ramp to ~0 over `feather` px at every edge (crop space)."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    edge = np.minimum(centres, size - centres)  # distance to the nearer edge
    ramp = np.clip(edge / feather, 0, 1)
    return np.minimum(ramp[:, None], ramp[None, :])


def pasted_box(matrix: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the picture pixels the paste-back can touch. Bilinear sampling
    reaches one pixel past the crop, so the crop square is widened by one on each side."""
    import cv2

    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[-1, -1, 1], [CROP, -1, 1], [-1, CROP, 1], [CROP, CROP, 1]], float)
    mapped = corners @ inverse.T
    x0, y0 = np.floor(mapped.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(mapped.max(axis=0)).astype(int) + 2
    return max(0, int(x0)), max(0, int(y0)), min(width, int(x1)), min(height, int(y1))


def paste_face(image: np.ndarray, restored: np.ndarray, matrix: np.ndarray,
               mask: np.ndarray | None = None
               ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`restored` (the 512x512 crop after restoration) blended back into `image` through
    `mask` (crop space, in [0, 1]; the feathered mask unless facexlib's parsing network
    made one); returns the new picture and the box it may differ in."""
    import cv2

    height, width = image.shape[:2]
    inverse = cv2.invertAffineTransform(matrix)
    back = cv2.warpAffine(restored, inverse, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    crop_mask = feather_mask() if mask is None else np.asarray(mask, dtype=np.float32)
    mask = cv2.warpAffine(crop_mask, inverse, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    x0, y0, x1, y1 = box = pasted_box(matrix, width, height)
    out = image.copy()
    m = mask[y0:y1, x0:x1, None]
    blended = m * back[y0:y1, x0:x1] + (1 - m) * image[y0:y1, x0:x1]
    # Where the mask is 0 the blend gives the original value exactly, so rounding keeps it.
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out, box
