"""WILSON's localizer: a small convolutional head on the segmentation encoder's features that
predicts pixel scores z for every class seen so far (Cermelli et al. CVPR 2022, Sec. 3.2, 4.3).
"""

from __future__ import annotations

from torch import Tensor, nn


class Localizer(nn.Module):
    """Three convolutions, stride 1 (WILSON Sec. 4.3):

    3×3 conv F→256, BN, LeakyReLU; 3×3 conv 256→256, BN, LeakyReLU; 1×1 conv 256→|Y^t|.

    The paper's "batch normalization and Leaky ReLU" is the in-place activated BN (InPlace-ABN,
    leaky slope 0.01) of the authors' code; here a plain ``BatchNorm2d`` + ``LeakyReLU(0.01)``.
    The convolutions before BN have no bias; the last one has one. PyTorch default init.

    ``forward(features)`` maps the encoder features (B, F, h, w) float of the segmentation model
    (``Segmenter(...)["features"]``) to (B, num_classes, h, w) float scores z, real-valued,
    channel order = class index (background, old classes, new classes).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, negative_slope: float = 0.01):
        """
        Args:
            in_channels: F, channels of the encoder features (2048 for ResNet-101).
            num_classes: |Y^t| = 1 (background) + old + new classes.
            channels: width of the two hidden layers (256 in the paper).
            negative_slope: slope of the LeakyReLU.
        Raises:
            ValueError: a non-positive channel count.
        """
        super().__init__()
        if min(in_channels, num_classes, channels) < 1:
            raise ValueError(f"in_channels={in_channels}, num_classes={num_classes}, channels={channels}: must be ≥ 1")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(negative_slope, inplace=True),
            nn.Conv2d(channels, num_classes, 1, stride=1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)
