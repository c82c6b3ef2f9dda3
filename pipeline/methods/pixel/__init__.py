"""Pixel-label methods: step 0 (``base``), fine-tuning (``ft``, the lower bound) and joint training
(``joint``, the upper bound). They differ only in their data (:mod:`pipeline.methods.pixel.method`)."""

from pipeline.methods.registry import MethodSpec, declare

declare(
    MethodSpec(
        "base",
        label="Base (step 0)",
        order=0,
        supervision="pixel",
        steps="base",
        paper="DeepLabV3 (Chen et al. 2017), WILSON Sec. 4.3 (step 0)",
    ),
    MethodSpec("ft", label="FT", order=10, supervision="pixel", paper="WILSON Tables 1-2 (fine-tuning)"),
    MethodSpec("joint", label="Joint", order=20, supervision="pixel", paper="WILSON Tables 1-2 (joint training)"),
    package=__name__,
)
