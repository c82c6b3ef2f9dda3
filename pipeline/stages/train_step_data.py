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
from pipeline.data.tasks import joint_ids, pixel_target_lut
from pipeline.data.transforms import TrainTransform
from pipeline.io import read_json
from pipeline.data.datasets import step_dataset
from pipeline.data.datasets import BLANK_LUT, WithImageLabels


def training_data(supervision: str, split: dict, data_index: str, task: str, step: int, num_classes: int,
                  train: dict, pseudo: str | None = None, coseg: str | None = None, coseg_cfg: dict | None = None,
                  memory: str | None = None, paste_prob: float = 0.5) -> Dataset:
    """The dataset of ``split`` prepared for a method's supervision (see the module docstring).

    Raises:
        ValueError: unknown supervision, or a cache path the supervision needs is missing.
    """
    crop, scales = train["crop_size"], tuple(train["scale_range"])
    if supervision == "pixel-current":
        return step_dataset(data_index, split["ids"], TrainTransform(crop, scales, pixel_target_lut(task, step)))
    if supervision == "pixel-seen":
        index = read_json(data_index)
        ids = joint_ids({i: index["index"][i] for i in index["splits"]["train"]}, task, step, split["protocol"])
        return step_dataset(data_index, ids, TrainTransform(crop, scales, pixel_target_lut(task, step, "seen")))
    if supervision == "image":
        dataset = step_dataset(data_index, split["ids"], TrainTransform(crop, scales, BLANK_LUT))
        return WithImageLabels(dataset, split["labels"], num_classes)
    if supervision == "pseudo":
        if not pseudo:
            raise ValueError("pseudo-label supervision needs --pseudo (the pseudo-labels stage's .h5)")
        return PseudoLabelled(step_dataset(data_index, split["ids"], None), pseudo, split, TrainTransform(crop, scales))
    if supervision == "fmwiss":
        if not coseg:
            raise ValueError("fmwiss needs --coseg (the coseg stage's .h5)")
        from pipeline.data.tasks import new_classes

        dataset = CosegLabelled(step_dataset(data_index, split["ids"], None), coseg, coseg_cfg or {},
                                new_classes(task, step), memory, paste_prob, TrainTransform(crop, scales))
        return WithImageLabels(dataset, split["labels"], num_classes)
    raise ValueError(f"unknown supervision {supervision!r}")

