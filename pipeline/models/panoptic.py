"""Panoptic-DeepLab's instance representation: center/offset targets and the grouping at inference.

Panoptic-DeepLab (Cheng et al., CVPR 2020, Sec. 3.2-3.4) describes each object by a class-agnostic
*center heatmap* (a 2-D Gaussian of standard deviation ``sigma`` = 8 px at the instance's center
of mass) and an *offset map* (each pixel's 2-D vector to its instance's center). CL4WSIS (Sec. 3)
adopts the representation: "Instance ID k is assigned to pixel (i, j) if the k-th center is
closest when we move the pixel by its offset", centers being the heatmap points "that have the
same value before and after max pooling".

This module holds the pure tensor operations, on one image at a time (no batch dimension):

- :func:`panoptic_targets`: heatmap and offset targets from an instance-id map, as the reference
  ``PanopticDeepLabTargetGenerator`` (bowenc0221/panoptic-deeplab, detectron2's
  ``projects/Panoptic-DeepLab/panoptic_deeplab/target_generator.py``): center of mass in
  pixel-index coordinates, the Gaussian peak at the *rounded* center (Python ``round``, half to
  even) in a ``6 sigma + 3`` window (zero outside), several instances combined by a max, offsets
  to the *unrounded* center; center weights 1 on every non-void pixel, offset weights 1 on
  instance pixels.
- :func:`find_instance_centers`: local maxima kept by max-pooling NMS (kernel 7) and above a
  threshold (0.1, strict ``>`` as the reference's ``F.threshold``), the ``top_k`` (200) highest.
  The reference keeps ``score > k-th score``, i.e. k-1 centers when the scores differ; here
  exactly the k highest (ties: the earlier in row-major order).
- :func:`group_pixels`: each pixel's id is the nearest center to pixel + offset (ties: the lower
  id), as the reference.
- :func:`panoptic_instances`: thing pixels (semantic argmax in ``thing_classes``) grouped into
  instances; each instance's class is the majority of the semantic argmax over its pixels (the
  reference's ``merge_semantic_and_instance``; ties: the lower class) and its score the mean
  semantic probability of that class over the instance times the center score (Panoptic-DeepLab
  Sec. 4, "Score(Objectness) x Score(Class)"). The center score is the heatmap at the instance's
  own center; detectron2 samples the heatmap at the mask's centroid instead, and the CL4WSIS code
  (BESTIE's ``get_ins_map``) takes the maximum of a per-class heatmap inside the instance.

The CL4WSIS code differs in ways the paper does not state, kept out of these defaults: one
heatmap channel per class (BESTIE's), a center at the *truncated* center of mass, center loss
weights on instance pixels only, grouping run per connected component of each class.

Defaults are Panoptic-DeepLab's: ``SIGMA`` 8, ``NMS_KERNEL`` 7, ``CENTER_THRESHOLD`` 0.1,
``TOP_K`` 200 (its Cityscapes/COCO configs, ``POST_PROCESSING``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

SIGMA = 8.0
NMS_KERNEL = 7
CENTER_THRESHOLD = 0.1
TOP_K = 200
VOID = 255


def _as_long_map(instance_map) -> Tensor:
    if isinstance(instance_map, np.ndarray):
        instance_map = torch.from_numpy(np.ascontiguousarray(instance_map))
    if instance_map.ndim != 2:
        raise ValueError(f"instance_map must be (H, W), got shape {tuple(instance_map.shape)}")
    if instance_map.dtype.is_floating_point or instance_map.dtype == torch.bool:
        raise TypeError(f"instance_map must hold integer ids, got dtype {instance_map.dtype}")
    return instance_map.long()


def panoptic_targets(instance_map, sigma: float = SIGMA, void: int | None = VOID) -> dict[str, Tensor]:
    """Center heatmap and offset targets of one image (Panoptic-DeepLab Sec. 3.2).

    Args:
        instance_map: (H, W) integer tensor or array of instance ids: 0 background (no
            instance), ``void`` ignored, any other value one instance.
        sigma: standard deviation of the Gaussian in pixels.
        void: id of ignored pixels (zero center weight); None: none.
    Returns:
        ``{"center": (1, H, W) float32 in [0, 1], "offset": (2, H, W) float32 (dy, dx) from each
        instance pixel to its center of mass (0 elsewhere), "center_weight": (1, H, W) float32 (0
        on void), "offset_weight": (1, H, W) float32 (1 on instance pixels), "centers": (K, 2)
        float64 (y, x) centers of mass, "ids": (K,) int64}``, instances in increasing id order.
    """
    ids_map = _as_long_map(instance_map)
    height, width = ids_map.shape
    device = ids_map.device
    is_void = ids_map == void if void is not None else torch.zeros_like(ids_map, dtype=torch.bool)
    thing = (ids_map != 0) & ~is_void
    ys, xs = torch.nonzero(thing, as_tuple=True)
    ids, inverse, counts = torch.unique(ids_map[ys, xs], return_inverse=True, return_counts=True)
    k = ids.numel()
    sum_y = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, inverse, ys.double())
    sum_x = torch.zeros(k, dtype=torch.float64, device=device).index_add_(0, inverse, xs.double())
    centers = torch.stack([sum_y / counts, sum_x / counts], dim=1) if k else torch.zeros(0, 2, dtype=torch.float64)
    offset = torch.zeros(2, height, width, dtype=torch.float32, device=device)
    offset[0, ys, xs] = (centers[inverse, 0] - ys.double()).float()
    offset[1, ys, xs] = (centers[inverse, 1] - xs.double()).float()
    center = torch.zeros(height, width, dtype=torch.float32, device=device)
    for cy, cx in centers.tolist():
        y, x = round(cy), round(cx)  # half to even, as the reference's int(round(.))
        # the reference's window [x - 3 sigma - 1, x + 3 sigma + 2), clipped to the image
        x0, x1 = max(0, int(np.round(x - 3 * sigma - 1))), min(width, int(np.round(x + 3 * sigma + 2)))
        y0, y1 = max(0, int(np.round(y - 3 * sigma - 1))), min(height, int(np.round(y + 3 * sigma + 2)))
        if x0 >= x1 or y0 >= y1:
            continue
        dy = torch.arange(y0, y1, dtype=torch.float64, device=device) - y
        dx = torch.arange(x0, x1, dtype=torch.float64, device=device) - x
        g = torch.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * sigma**2)).float()
        center[y0:y1, x0:x1] = torch.maximum(center[y0:y1, x0:x1], g)
    return {
        "center": center[None],
        "offset": offset,
        "center_weight": (~is_void).float()[None],
        "offset_weight": thing.float()[None],
        "centers": centers,
        "ids": ids,
    }


def _heatmap_2d(center_heatmap: Tensor) -> Tensor:
    if center_heatmap.ndim == 3 and center_heatmap.shape[0] == 1:
        center_heatmap = center_heatmap[0]
    if center_heatmap.ndim != 2:
        raise ValueError(f"center heatmap must be (H, W) or (1, H, W), got shape {tuple(center_heatmap.shape)}")
    return center_heatmap


def find_instance_centers(
    center_heatmap: Tensor, threshold: float = CENTER_THRESHOLD, nms_kernel: int = NMS_KERNEL, top_k: int | None = TOP_K
) -> Tensor:
    """Instance centers: heatmap points equal to their ``nms_kernel`` max-pool and above ``threshold``.

    Args:
        center_heatmap: (H, W) or (1, H, W) float.
        threshold: a center's score must be strictly greater.
        nms_kernel: odd max-pooling window (stride 1, padding ``(k - 1) // 2``); a plateau of
            equal maxima keeps every point of it, as the reference.
        top_k: keep the ``top_k`` highest scores (None: all).
    Returns:
        (K, 2) int64 ``(y, x)`` in row-major order.
    """
    if nms_kernel < 1 or nms_kernel % 2 == 0:
        raise ValueError(f"nms_kernel must be a positive odd integer, got {nms_kernel}")
    heat = _heatmap_2d(center_heatmap).float()
    pooled = F.max_pool2d(heat[None, None], nms_kernel, stride=1, padding=(nms_kernel - 1) // 2)[0, 0]
    keep = (heat > threshold) & (heat == pooled)
    centers = torch.nonzero(keep)
    if top_k is not None and centers.shape[0] > top_k:
        scores = heat[centers[:, 0], centers[:, 1]]
        order = torch.sort(scores, descending=True, stable=True).indices[:top_k]
        centers = centers[torch.sort(order).values]  # back to row-major order
    return centers


def group_pixels(centers: Tensor, offsets: Tensor) -> Tensor:
    """Each pixel's instance: the nearest center to the pixel moved by its offset.

    Args:
        centers: (K, 2) ``(y, x)`` center coordinates, K >= 1.
        offsets: (2, H, W) float ``(dy, dx)`` in pixels.
    Returns:
        (H, W) int64 ids 1..K (the index of the nearest center plus one; ties go to the lower id).
    """
    if offsets.ndim != 3 or offsets.shape[0] != 2:
        raise ValueError(f"offsets must be (2, H, W), got shape {tuple(offsets.shape)}")
    if centers.ndim != 2 or centers.shape[1] != 2 or centers.shape[0] == 0:
        raise ValueError(f"centers must be (K, 2) with K >= 1, got shape {tuple(centers.shape)}")
    _, height, width = offsets.shape
    device = offsets.device
    y = torch.arange(height, dtype=torch.float32, device=device)[:, None] + offsets[0].float()
    x = torch.arange(width, dtype=torch.float32, device=device)[None, :] + offsets[1].float()
    best = torch.full((height, width), float("inf"), device=device)
    ids = torch.ones((height, width), dtype=torch.int64, device=device)
    for k, (cy, cx) in enumerate(centers.float().tolist(), start=1):  # O(H W) memory, not O(K H W)
        distance = (y - cy) ** 2 + (x - cx) ** 2
        closer = distance < best  # strict: a tie keeps the lower id, as argmin
        best = torch.where(closer, distance, best)
        ids = torch.where(closer, torch.full_like(ids, k), ids)
    return ids


@dataclass
class InstancePrediction:
    """Instances of one image: ``id_map`` (H, W) int64 (0 none, i = ``labels[i-1]`` ...), ``labels``
    (N,) int64 classes, ``scores`` (N,) float32, ``centers`` (N, 2) int64 ``(y, x)``."""

    id_map: Tensor
    labels: Tensor
    scores: Tensor
    centers: Tensor

    def masks(self) -> Tensor:
        """(N, H, W) bool, one mask per instance (what the instance AP reads)."""
        ids = torch.arange(1, self.labels.numel() + 1, device=self.id_map.device)
        return self.id_map[None] == ids[:, None, None]


def panoptic_instances(
    semantic_prob: Tensor,
    center_heatmap: Tensor,
    offsets: Tensor,
    thing_classes: Sequence[int] | None = None,
    threshold: float = CENTER_THRESHOLD,
    nms_kernel: int = NMS_KERNEL,
    top_k: int | None = TOP_K,
) -> InstancePrediction:
    """Instance segmentation of one image from semantic, center and offset outputs (Panoptic-DeepLab).

    Args:
        semantic_prob: (C, H, W) class probabilities (channel 0 background); their argmax is the
            semantic map.
        center_heatmap: (H, W) or (1, H, W) center scores.
        offsets: (2, H, W) ``(dy, dx)`` in pixels at this resolution.
        thing_classes: classes grouped into instances (default every class but 0).
        threshold, nms_kernel, top_k: :func:`find_instance_centers`.
    Returns:
        :class:`InstancePrediction`; instances numbered in their centers' row-major order, those
        that receive no thing pixel dropped. Class: majority of the semantic argmax over the
        instance (ties: the lower class); score: mean of ``semantic_prob[class]`` over the
        instance times the heatmap at its center.
    """
    if semantic_prob.ndim != 3:
        raise ValueError(f"semantic_prob must be (C, H, W), got shape {tuple(semantic_prob.shape)}")
    num_classes, height, width = semantic_prob.shape
    heat = _heatmap_2d(center_heatmap)
    if heat.shape != (height, width) or offsets.shape[1:] != (height, width):
        raise ValueError(
            f"sizes differ: semantic {height}x{width}, heatmap {tuple(heat.shape)}, offsets {tuple(offsets.shape[1:])}"
        )
    device = semantic_prob.device
    semantic = semantic_prob.argmax(0)
    things = torch.tensor(
        list(range(1, num_classes)) if thing_classes is None else list(thing_classes), dtype=torch.int64, device=device
    )
    thing = torch.isin(semantic, things)
    centers = find_instance_centers(heat, threshold, nms_kernel, top_k)
    empty = InstancePrediction(
        torch.zeros(height, width, dtype=torch.int64, device=device),
        torch.zeros(0, dtype=torch.int64, device=device),
        torch.zeros(0, dtype=torch.float32, device=device),
        torch.zeros(0, 2, dtype=torch.int64, device=device),
    )
    if centers.shape[0] == 0 or not thing.any():
        return empty
    ids = group_pixels(centers, offsets) * thing
    k = centers.shape[0]
    flat_ids, flat_sem = ids.reshape(-1), semantic.reshape(-1)
    votes = torch.bincount(flat_ids * num_classes + flat_sem, minlength=(k + 1) * num_classes)
    votes = votes.reshape(k + 1, num_classes)[1:]
    area = votes.sum(1)
    labels = votes.argmax(1)  # first maximum: the lower class on a tie
    pixel_label = labels[(flat_ids - 1).clamp(min=0)]
    prob = semantic_prob.reshape(num_classes, -1).gather(0, pixel_label[None])[0].double()
    prob_sum = torch.zeros(k + 1, dtype=torch.float64, device=device).index_add_(0, flat_ids, prob)[1:]
    center_score = heat[centers[:, 0], centers[:, 1]].double()
    kept = torch.nonzero(area > 0).flatten()
    if kept.numel() == 0:
        return empty
    scores = (prob_sum[kept] / area[kept] * center_score[kept]).float()
    renumber = torch.zeros(k + 1, dtype=torch.int64, device=device)
    renumber[kept + 1] = torch.arange(1, kept.numel() + 1, device=device)
    return InstancePrediction(renumber[ids], labels[kept], scores, centers[kept])


__all__ = [
    "CENTER_THRESHOLD",
    "NMS_KERNEL",
    "SIGMA",
    "TOP_K",
    "InstancePrediction",
    "find_instance_centers",
    "group_pixels",
    "panoptic_instances",
    "panoptic_targets",
]
