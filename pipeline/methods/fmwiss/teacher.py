"""FMWISS' plug-in teacher T^t: an ASPP network on the segmentation encoder's features that learns
better pseudo-masks during training and is distilled into the segmentation model (Yu et al.,
CVPR 2023, Sec. 3.3 and Fig. 2).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP


class ASPPTeacher(nn.Module):
    """ASPP (torchvision's DeepLabV3 module: 1×1 conv, three atrous 3×3 convs, image pooling, each
    with BN + ReLU, concatenated and projected to ``channels`` with BN, ReLU, dropout 0.5) followed
    by a 1×1 classifier over every seen class.

    The paper names only "ASPP network" (Fig. 2). The pixel embeddings of the dense contrastive
    loss (Eq. 7) are the ASPP output (the classifier's input) L2-normalised over channels, so
    that i·q is a cosine similarity; no separate projection head. The ASPP output follows a ReLU
    (and, in training mode, the dropout), so the embeddings are non-negative: i·q in [0, 1].

    ``forward(features)`` maps the encoder features (B, F, h, w) float
    (``Segmenter(...)["features"]``) to a dict:

    - ``logits``: (B, num_classes, h, w) float T, real-valued, channel order = class index
      (background, old classes, new classes), at feature resolution;
    - ``embedding``: (B, channels, h, w) float, unit L2 norm over channels (0 where the ASPP
      output is all zero).
    """

    def __init__(
        self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (6, 12, 18), channels: int = 256
    ):
        """
        Args:
            in_channels: F, channels of the encoder features (2048 for ResNet-101).
            num_classes: |Y^t| = 1 (background) + old + new classes.
            atrous_rates: the three dilation rates (6, 12, 18 at output stride 16, as the
                segmenter's own ASPP: :data:`pipeline.models.segmenter.ATROUS_RATES`).
            channels: D, width of the ASPP and of the embeddings (256).
        Raises:
            ValueError: a non-positive channel count, or not three positive rates.
        """
        super().__init__()
        if min(in_channels, num_classes, channels) < 1:
            raise ValueError(f"in_channels={in_channels}, num_classes={num_classes}, channels={channels}: must be ≥ 1")
        rates = [int(r) for r in atrous_rates]
        if len(rates) != 3 or min(rates) < 1:
            raise ValueError(f"atrous_rates={list(atrous_rates)}: expected three rates ≥ 1")
        self.in_channels, self.num_classes, self.channels = in_channels, num_classes, channels
        self.aspp = ASPP(in_channels, rates, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        x = self.aspp(features)
        return {"logits": self.classifier(x), "embedding": F.normalize(x, dim=1)}
