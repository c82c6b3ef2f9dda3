"""CL4WSIS's extra trainable parts of Phase 1 (Sec. 3.1-3.2, 4.3): the Decoder and the Peak Generator.

The *Decoder* d(·) is WILSON's localizer, unchanged: CL4WSIS Sec. 4.3 describes "3 convolution
layers followed by batch normalization and Leaky ReLU, where the kernel size is 3x3 for the first
two while 1x1 for the last, with channel numbers {256, 256, |Y^{0:t}|}, and stride 1", WILSON's
Sec. 4.3 localizer, and the authors' ``PseudoLabeler`` (``wss/modules.py``) is WILSON's code's
(conv, InPlace-ABN, conv, InPlace-ABN, 1x1 conv). :data:`Decoder` is
:class:`pipeline.methods.wilson.localizer.Localizer`.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from pipeline.methods.cl4wsis.losses import peak_stimulation
from pipeline.methods.wilson.localizer import Localizer

#: The Decoder (CL4WSIS Sec. 4.3) is WILSON's localizer (module docstring).
Decoder = Localizer


class PeakGenerator(nn.Module):
    """The Peak Generator, PG (CL4WSIS Sec. 3.2, 4.3): "1 layer for keeping the high activation
    values followed by a convolution layer with kernel size 1x1, |Y^t| channels, and stride 1".

    ``forward(scores)`` takes the Decoder's logits Z (B, |Y^{0:t}|, h, w), keeps its last
    ``num_new`` channels (the current classes Y^t, as the authors' ``x[:, -self.new_classes:]``),
    thresholds them (:func:`pipeline.methods.cl4wsis.losses.peak_stimulation`, γ · global max per
    channel) and applies the 1x1 convolution: Z^pg (B, |Y^t|, h, w) float. It is trained through
    the aggregator with the image labels (:func:`~pipeline.methods.cl4wsis.losses.peak_generator_loss`),
    and the gradient reaches the Decoder through the kept pixels (Sec. 3.2: "PG also encourages
    Decoder to strengthen the activation of the current class semantic map").

    Initialisation as the authors' ``_initialize_weights``: weights N(0, sqrt(2 / (k·k·out))),
    bias 0.

    Args:
        num_new: |Y^t| ≥ 1.
        gamma: γ of the threshold (0.7, Sec. 3.2).
    Raises:
        ValueError: num_new < 1 or γ outside [0, 1].
    """

    def __init__(self, num_new: int, gamma: float = 0.7):
        super().__init__()
        if num_new < 1:
            raise ValueError(f"num_new={num_new}: the Peak Generator needs at least one current class")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma={gamma}: must be in [0, 1]")
        self.num_new, self.gamma = num_new, gamma
        self.conv = nn.Conv2d(num_new, num_new, 1)
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / num_new))
        nn.init.zeros_(self.conv.bias)

    def forward(self, scores: Tensor) -> Tensor:
        if scores.dim() != 4 or scores.shape[1] < self.num_new:
            raise ValueError(
                f"scores {tuple(scores.shape)}: expected (B, C, h, w) Decoder logits with C >= {self.num_new}"
            )
        return self.conv(peak_stimulation(scores[:, -self.num_new :], self.gamma))


__all__ = ["Decoder", "PeakGenerator"]
