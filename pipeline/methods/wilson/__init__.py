"""WILSON (Cermelli et al., CVPR 2022): a localizer learns the new classes from image-level labels
and the old model's prior; its pseudo-labels train the segmenter. Objective: ``method.py``;
equations: ``losses.py``; localizer: ``localizer.py``."""

from pipeline.methods.registry import MethodSpec, declare

declare(
    MethodSpec(
        "wilson", label="WILSON", order=70, supervision="image", paper="Cermelli et al., CVPR 2022", equations="Eq. 1-8"
    ),
    package=__name__,
)
