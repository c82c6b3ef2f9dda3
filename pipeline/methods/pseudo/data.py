"""Data adapter of the offline baselines: the step's images with their hard pseudo-labels."""

from __future__ import annotations

from torch.utils.data import Dataset

from pipeline.cache import open_cache
from pipeline.data.datasets import NamedTargets, lazy_cache, step_dataset
from pipeline.data.transforms import TrainTransform
from pipeline.wsss.pseudo_labels import read_pseudo_label


def pseudo_label_provenance(split: dict) -> dict:
    """What a step must find in the pseudo-label cache's provenance (the ``pseudo-labels`` stage
    also records the CAM model's hash and its settings; Snakemake re-runs the step when the cache
    changes)."""
    return {
        "kind": "wsss_pseudo_labels",
        "task": split["task"],
        "protocol": split["protocol"],
        "step": int(split["step"]),
        "new_classes": [int(c) for c in split["new_classes"]],
    }


class PseudoLabelled(Dataset):
    """The step's images with their hard pseudo-labels (``pseudo-labels`` stage) as the transform's
    mask; the ground truth is never read.

    ``dataset[i]``: the transform's output for ``{"id", "image", "mask" = pseudo-label}``.

    Raises:
        CacheError: a stale cache or an image missing from it; ValueError: a label of another size.
    """

    def __init__(self, images: Dataset, cache_path: str, split: dict, transform):
        expected = pseudo_label_provenance(split)
        self.images, self.transform, self.path = images, transform, cache_path
        self.cache = lazy_cache(cache_path, expected)
        with open_cache(cache_path, expected) as reader:
            reader.require(images.ids, "pseudo-label")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        sample = self.images[i]
        label = read_pseudo_label(self.cache.get(), sample["id"])
        if label.shape != sample["image"].shape[:2]:
            raise ValueError(
                f"{self.path}: pseudo-label of {sample['id']!r} is {label.shape}, the image {sample['image'].shape[:2]}"
            )
        return self.transform({"id": sample["id"], "image": sample["image"], "mask": label})


def pseudo_label_dataset(data_index: str, split: dict, train: dict, cache_path: str) -> Dataset:
    """Training samples with ``pseudo`` (int64 (h, w): 0, a new class, or 255 void/padding) and
    ``valid``."""
    transform = TrainTransform(train["crop_size"], tuple(train["scale_range"]))
    return NamedTargets(
        PseudoLabelled(step_dataset(data_index, split["ids"], None), cache_path, split, transform), "pseudo"
    )
