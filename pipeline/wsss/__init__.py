"""Offline weakly-supervised baselines (``cam``, ``vwe``, ``iscam``) of the incremental steps:
a CAM classifier trained on a step's images with image-level labels (``train-cam``), then hard
pseudo-labels cached per image (``pseudo-labels``) for the segmentation step that uses them
(WILSON Sec. 4.2).

Consumer API (the incremental step reading the labels)::

    from pipeline.cache import open_cache
    from pipeline.wsss import expected_provenance, read_pseudo_label

    expected = expected_provenance(cam, model_pt, split, config["wsss"][cam])
    with open_cache(pseudo_h5, expected) as reader:
        label = read_pseudo_label(reader, image_id)   # (H, W) uint8: 0 or a new class id
"""

from pipeline.wsss.pseudo_labels import expected_provenance, read_pseudo_label

__all__ = ["expected_provenance", "read_pseudo_label"]
