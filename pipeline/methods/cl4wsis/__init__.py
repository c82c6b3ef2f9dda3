"""CL4WSIS (Hsieh et al., ICCV 2023): class-incremental instance segmentation from image-level labels.

Two phases per step t >= 1, each a run of the shared loop with its own objective
(``method.py``): Phase 1 (CL for WSSS, Sec. 3.1) trains the semantic Segmenter with WILSON's
machinery plus the Peak Generator, feature-level augmentation consistency and random dropout;
Phase 2 (CL for WSIS, Sec. 3.2) trains the Panoptic-DeepLab instance branch alone on synthetic
center/offset labels with selective distillation of the old classes. Equations: ``losses.py``;
synthetic labels: ``synthetic.py``; Decoder and Peak Generator: ``modules.py``; the model:
:mod:`pipeline.models.instance`. docs/cl4wsis.md lists the departures from the paper and code.
"""

from pipeline.methods.registry import MethodSpec, declare

declare(
    MethodSpec(
        "cl4wsis",
        label="CL4WSIS",
        order=90,
        supervision="image",
        paper="Hsieh et al., ICCV 2023",
        equations="Eq. 1-8",
    ),
    package=__name__,
)
