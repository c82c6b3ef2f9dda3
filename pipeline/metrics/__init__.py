"""Segmentation metrics on label maps: confusion matrix and mIoU old/new/all (``miou``), the contour
F-score (``contour``) and pseudo-label quality (``quality``). No model code: every stage that
measures (evaluation, the producers of pseudo-labels and co-segmentation masks) reads them."""
