"""Stage ``coseg``: FMWISS pre-training based co-segmentation of a step's training images (Sec. 3.2).

For every training image of the step (ids of ``step{t}.json``) and each of its labelled new
classes, runs CLIP with MaskCLIP's last block (initial mask scores, Eq. 1-3) and a self-supervised
ViT (seed-guided last-block attention, Eq. 4), and caches the score maps in HDF5
(:mod:`pipeline.cache`), one group per image id::

    classes    (K,)         int32    the image's labelled new classes (sorted)
    clip       (K, hc, wc)  float16  M_init, cosine pixel-text scores (Eq. 3) at CLIP's patch grid
    attention  (K, hs, ws)  float16  seed attention (Eq. 4 before [.]binary) / its max, SSL patch grid
    seeds      (K, N, 2)    int16    the seed points (row, col) on the SSL grid, -1 = none
    attrs: size (H, W) of the image, input_shape (h, w) fed to the models

Binarisation, top-K% and fusion are applied by the readers (:mod:`pipeline.foundation.coseg`), so
an ablation of them never re-runs this stage. The root attributes record the provenance
(:func:`pipeline.foundation.coseg.expected_provenance`); a killed run resumes from the partial
cache, skipping the images already written.

Inference: each image is resized (bilinear, antialiased) so that its long side is ``input_size``
with both sides rounded to whole patches (aspect kept to within half a patch); images are batched
by resized shape, so no padding enters the attention and a batch gives the results of one image
at a time. AMP (float16 autocast) on CUDA only.

``source: oracle`` runs no model: ``clip`` and ``attention`` hold the ground-truth masks (1 inside,
0 outside) of the labelled new classes at image resolution, so the read path is unchanged and
the fused masks equal the ground truth (an upper bound; mIoU 1.0 on the step's images).

With ``--quality`` the masks read back from the cache (initial, seeds, fused) are scored against
the ground truth of the step's training images (:class:`pipeline.metrics.quality.MaskQuality`:
mIoU over background + new classes, other classes as background, WILSON's convention; contour
F-score); ``--figure`` draws a few images. ``--quality-only`` reads an existing cache (``--out``)
without computing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.cache import CacheReader, CacheWriter
from pipeline.data.classes import VOID
from pipeline.data.voc import IMAGE_DIR, load_image, load_mask
from pipeline.foundation.attention import load_ssl, sample_seeds, seed_attention, seed_rng, ssl_mean_std
from pipeline.foundation.coseg import (
    coseg_label_maps,
    coseg_maps,
    expected_provenance,
    seed_foreground,
    step_attrs,
)
from pipeline.foundation.maskclip import clip_mean_std, dense_clip_scores, load_clip, text_embeddings
from pipeline.metrics.quality import MaskQuality

log = logging.getLogger("pipeline.foundation.compute")

VARIANTS = ("initial", "seeds", "fused")


# --------------------------------------------------------------------------------------------
# Inputs


def step_inputs(
    split: Mapping, index: Mapping, split_path: str = "split", data_path: str = "data"
) -> tuple[list[str], dict[str, list[int]], list[int]]:
    """The step's ids, each id's labelled *new* classes, and the new classes.

    Raises:
        ValueError: a missing key, or an id without labels or without an index entry (named).
    """
    for key in ("ids", "labels", "new_classes"):
        if key not in split:
            raise ValueError(f"{split_path}: not a split JSON, key {key!r} missing")
    for key in ("root", "mask_dir", "index"):
        if key not in index:
            raise ValueError(f"{data_path}: not a prepare-data index, key {key!r} missing")
    new = [int(c) for c in split["new_classes"] if int(c) != 0]
    ids = list(split["ids"])
    labels = {}
    for image_id in ids:
        if image_id not in split["labels"]:
            raise ValueError(f"{split_path}: id {image_id!r} has no entry in 'labels'")
        if image_id not in index["index"]:
            raise ValueError(f"{data_path}: id {image_id!r} of {split_path} has no entry in 'index'")
        labels[image_id] = sorted(int(c) for c in split["labels"][image_id] if int(c) in new)
    return ids, labels, new


def resized_shape(height: int, width: int, input_size: int, multiple: int) -> tuple[int, int]:
    """(h, w) an image is fed at: long side ``input_size``, each side rounded to a multiple of
    ``multiple`` (the patch size; at least one patch)."""
    scale = input_size / max(height, width)
    return (
        max(multiple, round(height * scale / multiple) * multiple),
        max(multiple, round(width * scale / multiple) * multiple),
    )


def bucket_batches(ids: Sequence[str], shapes: Mapping[str, tuple[int, int]], batch_size: int) -> list[list[str]]:
    """Batches of ids sharing one input shape (ids keep their order within a shape; shapes in
    order of first appearance)."""
    buckets: dict[tuple[int, int], list[str]] = {}
    for image_id in ids:
        buckets.setdefault(tuple(shapes[image_id]), []).append(image_id)
    return [bucket[i : i + batch_size] for bucket in buckets.values() for i in range(0, len(bucket), batch_size)]


class ResizedImages(Dataset):
    """Images of a dataset root resized for the models: ``{"id", "image": (3, h, w) float32 in
    [0, 1]}`` (bilinear, antialiased; shapes from :func:`resized_shape`)."""

    def __init__(self, root: str | Path, shapes: Mapping[str, tuple[int, int]]):
        self.root, self.shapes, self.ids = Path(root), dict(shapes), list(shapes)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        image_id = self.ids[i]
        image = load_image(self.root / IMAGE_DIR / f"{image_id}.jpg", image_id)
        return {"id": image_id, "image": resize_image(image, self.shapes[image_id])}


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, h, w) float32 in [0, 1], bilinear with antialiasing."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    if tuple(tensor.shape[-2:]) != tuple(shape):
        tensor = F.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False, antialias=True)
    return tensor[0].clamp_(0.0, 1.0)


def _collate(samples: list[dict]) -> dict:
    return {"id": [s["id"] for s in samples], "image": torch.stack([s["image"] for s in samples])}


# --------------------------------------------------------------------------------------------
# Models


class CosegModels:
    """CLIP (MaskCLIP) and the SSL ViT, ready to co-segment batches (FMWISS Eq. 1-4).

    Args:
        cfg: resolved ``coseg`` section (``source: clip``).
        classes: the classes whose text embeddings are prepared (a step's new classes).
        device: where to run; AMP float16 on CUDA.
        table: the task table of ``classes`` (the split's; ``coco80``: COCO-to-VOC, whose new
            classes 61..80 are VOC's, :func:`pipeline.foundation.maskclip.voc_indices`).
    Torch is seeded with ``cfg["seed"]`` before the models are built, so ``pretrained: none``
    (random init) gives the same models in every run (a resumed run continues with the same ones).
    """

    def __init__(self, cfg: Mapping, classes: Sequence[int], device: torch.device, table: str = "voc"):
        self.cfg, self.device, self.classes = cfg, device, list(classes)
        torch.manual_seed(cfg["seed"])
        clip = cfg["clip"]
        self.clip, tokenizer = load_clip(clip["model"], clip["pretrained"], device, quick_gelu=clip["quick_gelu"])
        ssl = cfg["ssl"]
        self.ssl = load_ssl(ssl["model"], ssl["pretrained"], ssl["checkpoint"], device)
        self.text = text_embeddings(self.clip, tokenizer, self.classes, cfg["clip"]["templates"], device, table)
        self.clip_norm = [torch.tensor(v, device=device).view(1, 3, 1, 1) for v in clip_mean_std(self.clip)]
        self.ssl_norm = [
            torch.tensor(v, device=device).view(1, 3, 1, 1) for v in ssl_mean_std(self.ssl, ssl["pretrained"])
        ]
        self.ssl_patch = tuple(self.ssl.patch_embed.patch_size)
        #: input sides are multiples of both models' patch sizes
        self.multiple = math.lcm(*self.clip.visual.patch_size, *self.ssl_patch)

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        return resized_shape(height, width, self.cfg["input_size"], self.multiple)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, ids: Sequence[str], labels: Sequence[Sequence[int]]) -> list[dict]:
        """Co-segment a batch.

        Args:
            images: (B, 3, h, w) float in [0, 1], one shape (multiples of :attr:`multiple`).
            ids: B image ids (seed the seed points); labels: each image's classes (in
                :attr:`classes`).
        Returns:
            B dicts of numpy arrays ``classes``, ``clip``, ``attention``, ``seeds`` (module
            docstring; float32 here, float16 once cached).
        """
        cfg, n_seeds = self.cfg, self.cfg["n_seeds"]
        images = images.to(self.device, non_blocking=True)
        amp = {"device_type": "cuda", "dtype": torch.float16, "enabled": self.device.type == "cuda"}
        with torch.autocast(**amp):
            scores = dense_clip_scores(self.clip, (images - self.clip_norm[0]) / self.clip_norm[1], self.text)
        grid = (images.shape[-2] // self.ssl_patch[0], images.shape[-1] // self.ssl_patch[1])
        k_max = max((len(c) for c in labels), default=0)
        seeds = np.full((len(ids), k_max, n_seeds, 2), -1, dtype=np.int64)
        per_image = []
        for b, (image_id, classes) in enumerate(zip(ids, labels)):
            rows = [self.classes.index(c) for c in classes]
            clip = scores[b, rows].float()  # (K, hc, wc)
            on_grid = (
                clip
                if tuple(clip.shape[-2:]) == grid
                else F.interpolate(clip[None], size=grid, mode="bilinear", align_corners=False)[0]
            )
            foreground = seed_foreground(on_grid.cpu().numpy(), cfg["seed_threshold"])
            rng = seed_rng(cfg["seed"], image_id)
            for k in range(len(classes)):
                seeds[b, k] = sample_seeds(foreground[k], n_seeds, rng)
            per_image.append(clip.cpu().numpy())
        if k_max:
            with torch.autocast(**amp):
                attention = seed_attention(
                    self.ssl, (images - self.ssl_norm[0]) / self.ssl_norm[1], torch.from_numpy(seeds)
                )
            attention = attention.float().cpu().numpy()
        out = []
        for b, classes in enumerate(labels):
            k = len(classes)
            maps = attention[b, :k] if k else np.zeros((0, *grid), np.float32)
            peak = maps.reshape(k, -1).max(axis=1).reshape(k, 1, 1) if k else np.ones((0, 1, 1))
            maps = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
            out.append(
                {
                    "classes": np.asarray(classes, dtype=np.int32),
                    "clip": per_image[b],
                    "attention": maps,
                    "seeds": seeds[b, :k].astype(np.int16),
                }
            )
        return out


def oracle_arrays(mask: np.ndarray, classes: Sequence[int], cfg: Mapping, image_id: str) -> dict:
    """``source: oracle``: the ground-truth masks of ``classes`` as both score maps (see module).

    Args:
        mask: (H, W) uint8 ground truth; classes: the labelled new classes.
    Returns:
        ``classes``, ``clip`` = ``attention`` (K, H, W) float32 in {0, 1}, ``seeds`` (K, N, 2)
        drawn from the ground truth like the CLIP source draws them from ``M_init``.
    """
    masks = (mask[None] == np.asarray(classes, dtype=np.int64).reshape(-1, 1, 1)).astype(np.float32)
    rng = seed_rng(cfg["seed"], image_id)
    seeds = (
        np.stack([sample_seeds(m > 0.5, cfg["n_seeds"], rng) for m in masks])
        if len(classes)
        else np.zeros((0, cfg["n_seeds"], 2), np.int64)
    )
    return {
        "classes": np.asarray(classes, dtype=np.int32),
        "clip": masks,
        "attention": masks,
        "seeds": seeds.astype(np.int16),
    }


# --------------------------------------------------------------------------------------------
# The stage


def compute_cache(
    out: str | Path,
    cfg: Mapping,
    split: Mapping,
    index: Mapping,
    device: torch.device,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Write (or resume) the coseg cache of a step; returns its path (module docstring).

    Raises:
        ValueError / FileNotFoundError / RuntimeError: bad inputs or weights that cannot be
            loaded (named); pipeline.data.voc.DatasetError: a bad image or mask.
    """
    ids, labels, new_classes = step_inputs(split, index)
    provenance = expected_provenance(cfg)
    with CacheWriter(out, provenance) as writer:
        todo = [i for i in ids if i not in writer.done]
        log.info(
            "coseg %s: %d images (%d already cached), new classes %s, source %s",
            out,
            len(ids),
            len(ids) - len(todo),
            new_classes,
            cfg["source"],
        )
        bar = tqdm(total=len(todo), desc="coseg", unit="img", disable=not progress, mininterval=1.0)
        with bar:
            if cfg["source"] == "oracle":
                mask_dir = Path(index["mask_dir"])
                for image_id in todo:
                    mask = load_mask(mask_dir / f"{image_id}.png", image_id=image_id)
                    writer.put(
                        image_id,
                        oracle_arrays(mask, labels[image_id], cfg, image_id),
                        {"size": list(mask.shape), "input_shape": list(mask.shape)},
                    )
                    bar.update()
            elif todo:
                models = CosegModels(cfg, new_classes, device, split.get("task_table", "voc"))
                sizes = {i: (int(index["index"][i]["height"]), int(index["index"][i]["width"])) for i in ids}
                shapes = {i: models.input_shape(*sizes[i]) for i in ids}
                # Batches are cut from the full ordered id list, not from what is left to do, so a
                # resumed run computes each image in the batch it had in an uninterrupted run (CPU
                # kernels are not bit-identical across batch compositions); a batch that was cached
                # in part is recomputed and only its missing images are written.
                batches = [b for b in bucket_batches(ids, shapes, cfg["batch_size"]) if not writer.done.issuperset(b)]
                dataset = ResizedImages(index["root"], {i: shapes[i] for b in batches for i in b})
                position = {image_id: n for n, image_id in enumerate(dataset.ids)}
                loader = DataLoader(
                    dataset,
                    batch_sampler=[[position[i] for i in b] for b in batches],
                    collate_fn=_collate,
                    num_workers=workers,
                    pin_memory=device.type == "cuda",
                )
                for batch in loader:
                    results = models(batch["image"], batch["id"], [labels[i] for i in batch["id"]])
                    missing = [(i, arrays) for i, arrays in zip(batch["id"], results) if i not in writer.done]
                    for image_id, arrays in missing:
                        writer.put(
                            image_id, arrays, {"size": list(sizes[image_id]), "input_shape": list(shapes[image_id])}
                        )
                    bar.update(len(missing))
        path = writer.finish({**step_attrs(split), "n_images": len(ids)})
    log.info("wrote %s", path)
    return path


def measure_quality(
    cache: CacheReader,
    ids: Sequence[str],
    mask_dir: str | Path,
    new_classes: Sequence[int],
    cfg: Mapping,
    progress: bool = True,
) -> dict:
    """Quality of the initial, seed and fused masks read from ``cache`` (``cfg``'s read-time keys).

    Returns:
        ``{variant: MaskQuality.result()}`` for ``initial``, ``seeds``, ``fused``: mIoU over
        background + ``new_classes`` (other classes count as background, void ignored),
        per-class IoU, contour F-score.
    Raises:
        CacheError: an id missing from the cache.
    """
    quality = {variant: MaskQuality(new_classes) for variant in VARIANTS}
    for image_id in tqdm(ids, desc="coseg quality", unit="img", disable=not progress, mininterval=1.0):
        gt = load_mask(Path(mask_dir) / f"{image_id}.png", image_id=image_id)
        maps = coseg_label_maps(cache.get(image_id), cfg, gt.shape)
        for variant in VARIANTS:
            quality[variant].update(maps[variant], gt, image_id)
    return {variant: quality[variant].result() for variant in VARIANTS}


def figure_rows(
    cache: CacheReader, ids: Sequence[str], index: Mapping, new_classes: Sequence[int], cfg: Mapping
) -> list[dict]:
    """The panels of :func:`pipeline.foundation.figure.coseg_figure` for ``ids`` (ground truth of
    classes other than ``new_classes`` shown as background, as it is measured)."""
    rows = []
    for image_id in ids:
        image = load_image(Path(index["root"]) / IMAGE_DIR / f"{image_id}.jpg", image_id)
        gt = load_mask(Path(index["mask_dir"]) / f"{image_id}.png", image_id=image_id)
        gt = np.where(np.isin(gt, [*new_classes, VOID]), gt, 0).astype(np.uint8)  # as measured
        arrays = cache.get(image_id)
        size = gt.shape
        maps = coseg_maps(arrays, cfg, size)
        labelled = coseg_label_maps(arrays, cfg, size)
        seeds = np.zeros((0, 2))
        if maps["classes"]:
            grid = arrays["attention"].shape[1:]
            points = np.asarray(arrays["seeds"][0], dtype=float)
            points = points[(points >= 0).all(axis=1)]
            seeds = (points + 0.5) * np.array([size[0] / grid[0], size[1] / grid[1]])
        rows.append(
            {
                "id": image_id,
                "image": image,
                "classes": maps["classes"],
                "gt": gt,
                "initial": labelled["initial"],
                "fused": labelled["fused"],
                "seeds": seeds,
                "attention": maps["attention"][0] if maps["classes"] else None,
            }
        )
    return rows


__all__ = [
    "CosegModels",
    "bucket_batches",
    "compute_cache",
    "measure_quality",
    "oracle_arrays",
    "resized_shape",
    "step_inputs",
]
