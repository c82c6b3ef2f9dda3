"""PASCAL VOC class names, indices and colour palette.

Index 0 is background, 1..20 the object classes in the standard order, 255 void.
"""

from __future__ import annotations

import numpy as np

VOID = 255
BACKGROUND = 0

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_OBJECT_CLASSES = len(VOC_CLASSES) - 1  # 20


def voc_palette() -> np.ndarray:
    """The standard VOC colour map (the bit-interleaving one of the devkit's ``VOClabelcolormap``).

    Returns:
        (256, 3) uint8 array; row k is the RGB colour of label k (row 255 is (224, 224, 192)).
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        r = g = b = 0
        c = label
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[label] = (r, g, b)
    return palette


def class_name(c: int) -> str:
    """VOC name of class ``c`` (``"background"``, ``"aeroplane"``...), ``str(c)`` beyond VOC."""
    return VOC_CLASSES[c] if 0 <= c < len(VOC_CLASSES) else str(c)


def colourise(labels: np.ndarray) -> np.ndarray:
    """(H, W) uint8 label map → (H, W, 3) uint8 RGB with the VOC palette (255 void = cream)."""
    return voc_palette()[np.asarray(labels, dtype=np.uint8)]


__all__ = ["BACKGROUND", "NUM_OBJECT_CLASSES", "VOC_CLASSES", "VOID", "class_name", "colourise", "voc_palette"]
