"""Stage ``train-step``: learning step t >= 1 of a task for one incremental method.

Starts from the model of step t-1 of the same method (step 0: the ``base`` model), grows its
classifier by the new classes (initialised from the background, MiB Sec. 3.4), keeps a frozen
copy as the old model, and trains with the method's objective in the shared loop. The data
follow the method's supervision: pixel labels of the new classes (``ft``, ``mib``), pixel labels
of every seen class on the images of all steps so far (``joint``), image-level labels only
(``wilson``: the masks are blanked before they reach the objective), hard pseudo-labels from an
HDF5 cache of the ``pseudo-labels`` stage (``cam``, ``vwe``, ``iscam``: they replace the masks),
or image-level labels + the fused co-segmentation masks of the ``coseg`` cache + copy-paste of
old-class instances from the memory bank (``fmwiss``). Writes ``model.pt`` and ``history.csv`` in
``--outdir`` and resumes from ``checkpoint.pt`` there.
"""

from __future__ import annotations

from torch.utils.data import Dataset
from pipeline.cache import CacheError, open_cache
from pipeline.data.datasets import LazyCache


class PseudoLabelled(Dataset):
    """The step's images with their hard pseudo-labels (``pseudo-labels`` stage) as masks.

    ``dataset[i]``: the transform's output for ``{"id", "image", "mask" = pseudo-label}``; the
    ground-truth mask is never used.

    Raises:
        CacheError: an image missing from the cache; ValueError: a label of another size.
    """

    def __init__(self, images: Dataset, cache_path: str, split: dict, transform):
        from pipeline.wsss.pseudo_labels import read_pseudo_label

        # What this step must find in the cache (the pseudo-labels stage records the CAM model's hash
        # and its settings too; Snakemake re-runs this step when the cache changes).
        expected = {"kind": "wsss_pseudo_labels", "task": split["task"], "protocol": split["protocol"],
                    "step": int(split["step"]), "new_classes": [int(c) for c in split["new_classes"]]}
        self.images, self.transform, self.read = images, transform, read_pseudo_label
        self.cache = LazyCache(cache_path, expected)
        with open_cache(cache_path, expected) as reader:
            missing = [i for i in images.ids if i not in reader]
        if missing:
            raise CacheError(f"{cache_path}: no pseudo-label for {len(missing)} training images, e.g. {missing[0]!r}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        sample = self.images[i]
        label = self.read(self.cache.reader(), sample["id"])
        if label.shape != sample["image"].shape[:2]:
            raise ValueError(f"{self.cache.path}: pseudo-label of {sample['id']!r} is {label.shape}, "
                             f"the image {sample['image'].shape[:2]}")
        return self.transform({"id": sample["id"], "image": sample["image"], "mask": label})

