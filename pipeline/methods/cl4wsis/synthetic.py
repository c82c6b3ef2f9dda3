"""CL4WSIS Phase 2 (Sec. 3.2): synthetic center and offset labels of the current classes.

From the Phase-1 semantic map S and the Peak Generator's peaks, per image:

1. :func:`normalised_peak_maps` / :func:`class_peaks`: the Peak Generator's maps in eval mode,
   ReLU'd, zeroed for unlabelled classes, upsampled to the image, divided by their maximum,
   smoothed by a 3x3 mean (the authors' ``PeakGenerator.cam_normalize`` and
   ``wss/utils.smoothing``), and their peaks: local maxima by max-pooling NMS (kernel 15), the
   ``top_k`` (25) highest, above ``threshold`` (0.7) (authors' ``peak_extract(cam, kernel=15)``
   and ``--pseudo_thresh 0.7``), found by :func:`pipeline.models.panoptic.find_instance_centers`.
2. :func:`class_components`: connected components (8-connectivity, ``scipy.ndimage.label``; the
   authors use OpenCV's ``connectedComponentsWithStats(connectivity=8)``) of each labelled
   current class in S, those below ``min_area`` (20 px, the authors' ``MINIMUM_MASK_SIZE``)
   dropped.
3. :func:`isolated_targets`: a component holding exactly one peak of its class is an *isolated*
   instance: its center heatmap (Gaussian of ``sigma``) and offsets come from
   :func:`pipeline.models.panoptic.panoptic_targets` (Gaussian at the rounded center of mass,
   offsets to the exact center; the authors truncate the centroid to integers), weight 1.
4. :func:`refined_targets`: every other component (no peak, or several) gets *self-refinement*
   labels from the Segmenter's own outputs (Sec. 3.2): the pixels whose predicted offset is
   shorter than ``magnitude_threshold`` px form candidate masks (CCL), their centroids (rounded)
   are new centers, each pixel of the component joins the new center nearest to it after its
   predicted offset (:func:`pipeline.models.panoptic.group_pixels`), and the targets point to
   those centers with weight = the instance's confidence. The paper does not define the
   confidence; as the authors' ``refine_label_generation``: mean semantic probability of the
   class over the instance x the predicted heatmap at its center, clipped to [0, 1]. Components
   with more than ``max_instances`` (5, the authors' ``MAXIMUM_NUM_INST``) or no candidate get no
   label. The candidates are labelled with 4-connectivity below 2.5 px as the authors'
   ``cluster_peaks(thresh=2.5)`` (``dataset/utils.py``); the authors take the new centers mainly
   from the predicted *heatmap* inside the component (NMS, ``--refine_thresh 0.3``,
   ``--kernel 41``) and add a magnitude candidate only when it is over 100 px from every heatmap
   center and its area is within 21 ± ``beta`` (3) px; here the paper's magnitude rule alone.

:func:`synthetic_targets` runs 2-4 on one image and returns C^syn (1, H, W), O^syn (2, H, W) and
W^syn (1, H, W) (Eq. 5-6). Everything runs on one image at a time on the CPU (numpy/scipy),
as the authors' per-image loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torch.nn import functional as F

from pipeline.models.panoptic import find_instance_centers, group_pixels, panoptic_targets

#: 8-connectivity of the connected-component labelling (the authors' ``connectivity=8``).
EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Component:
    """One connected component of a class in the semantic map: ``mask`` (H, W) bool, ``cls`` its
    class, ``peaks`` the number of the class's peaks inside it."""

    mask: np.ndarray
    cls: int
    peaks: int


def normalised_peak_maps(peak_scores: Tensor, labels: Tensor, size: Sequence[int], smooth: int = 3) -> Tensor:
    """The Peak Generator's maps as peak heatmaps at image size (authors' ``cam_normalize`` +
    ``smoothing``).

    ReLU, times the image labels (absent classes → 0), bilinear upsampling to ``size``
    (``align_corners=False``), division by each map's maximum + 1e-5, a ``smooth`` x ``smooth``
    mean filter (stride 1, zero padding counted, as ``avg_pool2d``'s default).

    Args:
        peak_scores: (B, K, h, w) float Z^pg (after the 1x1 conv) of the K current classes.
        labels: (B, K) float image labels of those classes.
        size: (H, W).
        smooth: odd window of the mean filter (1 = none).
    Returns:
        (B, K, H, W) float in [0, 1).
    Raises:
        ValueError: shapes disagree or an even window.
    """
    if peak_scores.dim() != 4 or labels.shape != peak_scores.shape[:2]:
        raise ValueError(
            f"peak_scores {tuple(peak_scores.shape)}, labels {tuple(labels.shape)}: expected (B, K, h, w) and (B, K)"
        )
    if smooth < 1 or smooth % 2 == 0:
        raise ValueError(f"smooth={smooth}: expected a positive odd window")
    cam = F.relu(peak_scores.detach().float()) * labels.float()[:, :, None, None]
    cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
    cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
    if smooth > 1:
        cam = F.avg_pool2d(cam, smooth, stride=1, padding=smooth // 2)
    return cam


def class_peaks(peak_maps: Tensor, threshold: float = 0.7, kernel: int = 15, top_k: int = 25) -> list[Tensor]:
    """Peaks of each class map of one image: NMS local maxima above ``threshold``, ``top_k`` highest.

    Args:
        peak_maps: (K, H, W) float (:func:`normalised_peak_maps` of one image).
        threshold: a peak's value must exceed it (strict, as
            :func:`~pipeline.models.panoptic.find_instance_centers`; the authors keep ``>=``).
        kernel: odd NMS window (the authors' 15).
        top_k: most peaks per class (the authors' 25).
    Returns:
        K tensors (N_k, 2) int64 ``(y, x)``.
    """
    if peak_maps.dim() != 3:
        raise ValueError(f"peak_maps: expected (K, H, W), got shape {tuple(peak_maps.shape)}")
    return [find_instance_centers(m, threshold=threshold, nms_kernel=kernel, top_k=top_k) for m in peak_maps]


def class_components(
    semantic: np.ndarray, peaks: Mapping[int, np.ndarray], classes: Sequence[int], min_area: int = 20
) -> list[Component]:
    """Connected components of each class of ``classes`` in the semantic map, with their peak count.

    Args:
        semantic: (H, W) integer semantic map S.
        peaks: class → (N, 2) integer ``(y, x)`` peaks of that class (absent = none).
        classes: the classes to split (the image's labelled current classes).
        min_area: components with fewer pixels are dropped (no label at all).
    Returns:
        Components in class order, then in ``scipy.ndimage.label`` order (row-major first pixel).
    Raises:
        ValueError: ``semantic`` not 2-D, or a peak outside the image.
    """
    semantic = np.asarray(semantic)
    if semantic.ndim != 2:
        raise ValueError(f"semantic: expected an (H, W) map, got shape {semantic.shape}")
    height, width = semantic.shape
    out: list[Component] = []
    for cls in classes:
        labels, count = ndimage.label(semantic == cls, structure=EIGHT)
        points = np.asarray(peaks.get(int(cls), np.zeros((0, 2), dtype=np.int64))).reshape(-1, 2).astype(np.int64)
        if points.size and (points.min() < 0 or (points[:, 0] >= height).any() or (points[:, 1] >= width).any()):
            raise ValueError(f"class {cls}: peaks {points.tolist()} outside the {height}x{width} map")
        hit = labels[points[:, 0], points[:, 1]] if points.size else np.zeros(0, dtype=labels.dtype)
        per_component = np.bincount(hit, minlength=count + 1)
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        for k in range(1, count + 1):
            if areas[k] >= min_area:
                out.append(Component(labels == k, int(cls), int(per_component[k])))
    return out


def isolated_targets(components: Sequence[Component], size: Sequence[int], sigma: float) -> dict[str, Tensor]:
    """Center/offset labels of the isolated instances (one peak each), weight 1 on their pixels.

    Args:
        components: from :func:`class_components`; those with ``peaks == 1`` are used.
        size: (H, W).
        sigma: the Gaussian's standard deviation in pixels.
    Returns:
        ``center`` (1, H, W), ``offset`` (2, H, W) ``(dy, dx)``, ``weight`` (1, H, W) in {0, 1},
        float32 (:func:`pipeline.models.panoptic.panoptic_targets` of the isolated instances).
    """
    ids = np.zeros(tuple(size), dtype=np.int64)
    for k, component in enumerate(c for c in components if c.peaks == 1):
        ids[component.mask] = k + 1
    targets = panoptic_targets(ids, sigma=sigma, void=None)
    return {"center": targets["center"], "offset": targets["offset"], "weight": targets["offset_weight"]}


def _heatmap_at(centers: Tensor, size: Sequence[int], sigma: float) -> Tensor:
    """(1, H, W) Gaussians at integer ``centers`` (K, 2), Panoptic-DeepLab's rendering (a one-pixel
    instance per center: its center of mass is that pixel)."""
    ids = torch.zeros(tuple(size), dtype=torch.int64)
    for k, (y, x) in enumerate(centers.tolist()):
        ids[y, x] = k + 1
    return panoptic_targets(ids, sigma=sigma, void=None)["center"]


def refined_targets(
    component: Component,
    pred_center: Tensor,
    pred_offset: Tensor,
    class_prob: Tensor,
    sigma: float,
    magnitude_threshold: float = 2.5,
    max_instances: int = 5,
) -> dict[str, Tensor] | None:
    """Self-refinement labels of one component that is not an isolated instance (module docstring, 4).

    Args:
        component: the component (its ``mask``).
        pred_center: (H, W) float predicted heatmap of the Segmenter.
        pred_offset: (2, H, W) float predicted offsets ``(dy, dx)`` in pixels.
        class_prob: (H, W) float semantic probability of the component's class.
        sigma: Gaussian of the new centers.
        magnitude_threshold: pixels with ||offset|| < it are candidate center pixels (px; the paper
            gives no value, the authors' ``cluster_peaks`` 2.5).
        max_instances: more new centers than this: no label (the authors' 5).
    Returns:
        ``center`` (1, H, W), ``offset`` (2, H, W), ``weight`` (1, H, W) (the confidence on the
        component's grouped pixels, 0 elsewhere), ``centers`` (K, 2) int64; None when the component
        has no candidate or too many.
    """
    mask = torch.from_numpy(component.mask)
    height, width = mask.shape
    magnitude = pred_offset.float().norm(dim=0)
    candidates, count = ndimage.label((mask & (magnitude < magnitude_threshold)).numpy())  # 4-connectivity
    if count == 0 or count > max_instances:
        return None
    centroids = ndimage.center_of_mass(np.ones_like(candidates), candidates, range(1, count + 1))
    centers = torch.tensor([[round(cy), round(cx)] for cy, cx in centroids], dtype=torch.int64)
    ids = group_pixels(centers, pred_offset.float()) * mask  # 1..K on the component, 0 elsewhere
    weight = torch.zeros(height, width)
    offset = torch.zeros(2, height, width)
    ys = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    xs = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    kept = []
    for k in range(1, count + 1):
        pixels = ids == k
        if not bool(pixels.any()):
            continue
        cy, cx = centers[k - 1].tolist()
        confidence = float(class_prob[pixels].float().mean()) * float(pred_center[cy, cx])
        weight[pixels] = min(max(confidence, 0.0), 1.0)
        offset[0][pixels] = cy - ys[pixels]
        offset[1][pixels] = cx - xs[pixels]
        kept.append(k - 1)
    if not kept:
        return None
    kept_centers = centers[kept]
    return {
        "center": _heatmap_at(kept_centers, (height, width), sigma),
        "offset": offset,
        "weight": weight[None],
        "centers": kept_centers,
    }


def synthetic_targets(
    semantic: np.ndarray,
    class_prob: Tensor,
    peaks: Mapping[int, np.ndarray],
    classes: Sequence[int],
    pred_center: Tensor | None,
    pred_offset: Tensor | None,
    sigma: float = 6.0,
    min_area: int = 20,
    refine: bool = True,
    magnitude_threshold: float = 2.5,
    max_instances: int = 5,
) -> dict[str, Tensor]:
    """C^syn, O^syn and W^syn of one image (CL4WSIS Sec. 3.2; inputs of Eq. 5-6).

    Args:
        semantic: (H, W) integer semantic map S (old classes already set to background by the
            caller when only the current classes get labels).
        class_prob: (C, H, W) float semantic probabilities, channel = class (for the confidence).
        peaks: class → (N, 2) ``(y, x)`` peaks of the Peak Generator.
        classes: the image's labelled current classes.
        pred_center: (1, H, W) or (H, W) predicted heatmap; pred_offset: (2, H, W) predicted
            offsets (both only read with ``refine``; None without).
        sigma: Gaussian standard deviation (the authors' ``--sigma 6``; Panoptic-DeepLab: 8).
        min_area, magnitude_threshold, max_instances: see :func:`class_components`,
            :func:`refined_targets`.
        refine: self-refinement of the non-isolated components.
    Returns:
        ``center`` (1, H, W), ``offset`` (2, H, W), ``weight`` (1, H, W) float32 on the CPU;
        ``isolated`` and ``refined``: the number of instances of each kind.
    Raises:
        ValueError: shapes disagree, or ``refine`` without predictions.
    """
    semantic = np.asarray(semantic)
    size = semantic.shape
    if class_prob.dim() != 3 or tuple(class_prob.shape[1:]) != size:
        raise ValueError(f"class_prob {tuple(class_prob.shape)}: expected (C, {size[0]}, {size[1]})")
    components = class_components(semantic, peaks, classes, min_area)
    out = isolated_targets(components, size, sigma)
    out["isolated"] = sum(c.peaks == 1 for c in components)
    out["refined"] = 0
    if not refine:
        return out
    if pred_center is None or pred_offset is None:
        raise ValueError("refine=True needs the predicted center heatmap and offsets")
    center = pred_center.detach().float().cpu().reshape(size)
    offsets = pred_offset.detach().float().cpu()
    probs = class_prob.detach().float().cpu()
    for component in components:
        if component.peaks == 1:
            continue
        refined = refined_targets(
            component, center, offsets, probs[component.cls], sigma, magnitude_threshold, max_instances
        )
        if refined is None:
            continue
        region = refined["weight"] > 0
        out["center"] = torch.maximum(out["center"], refined["center"])
        out["offset"] = torch.where(region, refined["offset"], out["offset"])
        out["weight"] = torch.where(region, refined["weight"], out["weight"])
        out["refined"] += int(refined["centers"].shape[0])
    return out


__all__ = [
    "Component",
    "class_components",
    "class_peaks",
    "isolated_targets",
    "normalised_peak_maps",
    "refined_targets",
    "synthetic_targets",
]
