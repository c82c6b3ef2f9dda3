"""FMWISS (Yu et al., CVPR 2023): co-segmentation masks of foundation models (the ``coseg`` stage's
cache) train a plug-in teacher, distilled with the old model into the segmenter; a memory bank of
old-class instances is pasted into the step's images. Objective: ``method.py``; equations:
``losses.py``; teacher: ``teacher.py``; data adapter: ``data.py``; memory bank: ``memory.py``; copy-paste: ``copy_paste.py``."""

from pipeline.methods.registry import MethodSpec, declare

declare(
    MethodSpec(
        "fmwiss",
        label="FMWISS",
        order=80,
        supervision="image",
        reads=("coseg", "memory"),
        paper="Yu et al., CVPR 2023",
        equations="Eq. 1-12",
    ),
    package=__name__,
)
