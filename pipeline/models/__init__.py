"""Segmentation models: DeepLabV3 with an incremental classifier (and later heads)."""

from pipeline.models.segmenter import (
    IncrementalClassifier,
    Segmenter,
    build_segmenter,
    load_model,
    save_model,
)

__all__ = ["IncrementalClassifier", "Segmenter", "build_segmenter", "load_model", "save_model"]
