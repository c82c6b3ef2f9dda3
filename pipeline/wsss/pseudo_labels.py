"""Stage ``pseudo-labels``: hard pseudo-labels of step t from a trained CAM network (WILSON
Sec. 4.2: "we generate the hard pseudo-labels offline"), their quality and an example figure.

For every training image of ``step{t}.json``:

1. CAMs at several scales and their horizontal flips (EPS, ISCAM and VWE/IRNet inference: scales
   {0.5, 1, 1.5, 2} + flip), each resized (bilinear) to the feature grid of scale 1,
   h × w = ceil(H / output_stride) × ceil(W / output_stride), and averaged (:func:`multiscale_cams`).
2. Restricted to the image's labelled new classes (unlabelled channels are zeroed):
   ``cam``/``vwe``: each labelled map divided by its maximum (+1e-5) → [0, 1] (EPS/IRNet
   ``norm_cam``; :func:`normalise_cams`); ``iscam``: the softmax probabilities of background +
   labelled classes renormalised to sum to 1 (the authors' ``label_cond``; :func:`condition_on_labels`).
3. Hard label at image resolution (:func:`pseudo_label`): the scores are resized (bilinear) to
   H × W and each pixel takes the argmax of [background, labelled classes], where the background
   score is the constant ``threshold`` (``cam``, ``vwe``) or the conditioned background
   probability (``iscam``). Values: 0 background or a new class id; no pixel is left
   unlabelled (255 is never written: no uncertainty band).

Cache (:mod:`pipeline.cache`, one group per image id): ``label`` (H, W) uint8, ``cams`` (K, h, w)
float16 (the step-2 scores of the K new classes, channel k = ``new_classes[k]``, zero for
unlabelled classes), for ``iscam`` also ``background`` (h, w) float16; image attribute ``classes``
(labelled new classes). Provenance: :func:`expected_provenance`. A killed run resumes where it
stopped (:attr:`pipeline.cache.CacheWriter.done`). Consumers read with :func:`read_pseudo_label`.

Quality (``--quality`` JSON): region mIoU and contour F-score (paper 003, Sec. 4.1) of the labels
against the ground truth of the step's training images, over background + the step's new classes
(:class:`pipeline.metrics.quality.MaskQuality`; other classes of the ground truth count as background).

``--params``: ``{"cam": <wsss.<cam>>}``, optionally ``"quality": {"contour_tolerance": t}`` (pixels
if >= 1, else a fraction of the image diagonal; default 0.008, the DAVIS value of paper 003).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from pipeline import __version__
from pipeline.cache import CacheError, CacheReader, CacheWriter, open_cache
from pipeline.data.datasets import step_dataset
from pipeline.data.transforms import EvalTransform
from pipeline.data.voc import load_mask, resolve_mask_dir
from pipeline.io import file_sha256, read_json
from pipeline.metrics.quality import MaskQuality

log = logging.getLogger("pipeline.wsss.pseudo_labels")

#: Keys of ``wsss.<cam>`` the inference reads.
INFERENCE_KEYS = ("scales", "flip")
#: Contour F-score tolerance when ``--params`` has no ``quality.contour_tolerance``: 0.008 of the
#: image diagonal, the DAVIS code's ``bound_th`` that paper 003 (Sec. 4.1) uses.
DEFAULT_CONTOUR_TOLERANCE = 0.008


# --- CAM inference ------------------------------------------------------------------------------


@torch.no_grad()
def multiscale_cams(net: nn.Module, image: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """Average of the network's CAMs over rescaled (and flipped) copies of one image.

    Every copy's CAMs are resized (bilinear) to the feature grid of the image at scale 1
    (``net.feature_size(H, W)``), flipped copies flipped back, then all are averaged.

    Args:
        net: a CAM network in eval mode (:mod:`pipeline.wsss.networks`).
        image: (1, 3, H, W) or (3, H, W) float, ImageNet-normalised, on the network's device.
        scales: resize factors (> 0); a copy is resized bilinearly (antialiased when shrinking).
        flip: also run the horizontal flip of every copy.
    Returns:
        (C, h, w) float32 ≥ 0, C = K (+1 background channel first if ``net.has_background``).
    Raises:
        ValueError: empty scales or a scale ≤ 0.
    """
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales={list(scales)}: expected a non-empty list of positive factors")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    height, width = image.shape[-2:]
    size = net.feature_size(height, width)
    total, count = None, 0
    for scale in scales:
        scaled = image
        if scale != 1.0:
            scaled = F.interpolate(
                image,
                size=(max(1, round(height * scale)), max(1, round(width * scale))),
                mode="bilinear",
                align_corners=False,
                antialias=scale < 1.0,
            )
        batch = torch.cat([scaled, scaled.flip(-1)]) if flip else scaled
        cams = net.cams(batch).float()
        cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        if flip:
            cams = torch.stack([cams[0], cams[1].flip(-1)])
        summed = cams.sum(0)
        total = summed if total is None else total + summed
        count += cams.shape[0]
    return total / count


def normalise_cams(cams: Tensor, labelled: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-class max normalisation of the labelled classes' CAMs (EPS/IRNet ``norm_cam``).

    Args:
        cams: (K, h, w) float ≥ 0.
        labelled: (K,) bool, the image's labelled classes.
        eps: added to each maximum.
    Returns:
        (K, h, w) float in [0, 1): labelled maps divided by (max + eps), others zero.
    """
    peak = cams.flatten(1).amax(dim=1).clamp_min(0.0)[:, None, None]
    return torch.where(labelled[:, None, None], cams.clamp_min(0.0) / (peak + eps), torch.zeros_like(cams))


def condition_on_labels(probs: Tensor, labelled: Tensor, eps: float = 1e-8) -> Tensor:
    """Softmax CAMs restricted to background + labelled classes and renormalised (ISCAM authors'
    ``label_cond``): a'_k = a_k y_k / max(eps, sum_t a_t y_t), y_0 = 1.

    Args:
        probs: (1 + K, h, w) float probabilities, channel 0 background.
        labelled: (K,) bool.
    Returns:
        (1 + K, h, w) float in [0, 1], zero for unlabelled classes, summing to 1 per pixel.
    """
    keep = torch.cat([labelled.new_ones(1), labelled]).to(probs.dtype)[:, None, None]
    kept = probs * keep
    return kept / kept.sum(0, keepdim=True).clamp_min(eps)


def pseudo_label(
    cams: Tensor,
    labelled: Tensor,
    new_classes: Sequence[int],
    size: tuple[int, int],
    threshold: float | None = None,
    background: Tensor | None = None,
) -> np.ndarray:
    """Hard pseudo-label at image resolution from (normalised) CAMs of the new classes.

    Scores are resized (bilinear) to ``size``; each pixel gets the argmax over [background,
    labelled classes] (ties go to background, then to the lower channel). The background score is
    the constant ``threshold`` or the map ``background``, exactly one of them.

    Args:
        cams: (K, h, w) float scores of the new classes.
        labelled: (K,) bool, the image's labelled classes (the only ones a pixel may take).
        new_classes: the K class ids, channel k = ``new_classes[k]``.
        size: (H, W) of the image.
        threshold: background score (``cam``, ``vwe``).
        background: (h, w) float background score map (``iscam``).
    Returns:
        (H, W) uint8 with values in {0} ∪ labelled class ids.
    Raises:
        ValueError: both or neither of threshold/background, or shapes that disagree.
    """
    if (threshold is None) == (background is None):
        raise ValueError("pseudo_label: give exactly one of threshold (constant) or background (map)")
    if cams.dim() != 3 or cams.shape[0] != len(new_classes) or labelled.shape != (len(new_classes),):
        raise ValueError(
            f"cams {tuple(cams.shape)}, labelled {tuple(labelled.shape)}: expected (K, h, w) and (K,) "
            f"with K = {len(new_classes)} new classes"
        )
    scores = F.interpolate(cams[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    scores = scores.masked_fill(~labelled.bool()[:, None, None], float("-inf"))
    if background is None:
        back = scores.new_full((1, *size), float(threshold))
    else:
        back = F.interpolate(background[None, None].float(), size=size, mode="bilinear", align_corners=False)[0]
    winner = torch.cat([back, scores]).argmax(0)
    lut = torch.tensor([0, *[int(c) for c in new_classes]], dtype=torch.uint8, device=winner.device)
    return lut[winner].cpu().numpy()


def image_pseudo_label(
    net: nn.Module, image: Tensor, labels: Sequence[int], new_classes: Sequence[int], cfg: Mapping
) -> dict[str, np.ndarray]:
    """The cache entry of one image (see the module docstring).

    Args:
        net: CAM network, eval mode.
        image: (3, H, W) float normalised image on the network's device.
        labels: the image's labelled class ids (those not in ``new_classes`` are ignored).
        new_classes: the step's K new classes.
        cfg: ``wsss.<cam>``: ``scales``, ``flip``, and ``threshold`` unless the network has a
            background channel.
    Returns:
        ``{"label": (H, W) uint8, "cams": (K, h, w) float32[, "background": (h, w) float32]}``.
    """
    height, width = image.shape[-2:]
    labelled = torch.tensor([int(c) in {int(x) for x in labels} for c in new_classes], device=image.device)
    cams = multiscale_cams(net, image, [float(s) for s in cfg["scales"]], bool(cfg["flip"]))
    if net.has_background:
        conditioned = condition_on_labels(cams, labelled)
        background, scores = conditioned[0], conditioned[1:]
        label = pseudo_label(scores, labelled, new_classes, (height, width), background=background)
        return {"label": label, "cams": scores.cpu().numpy(), "background": background.cpu().numpy()}
    scores = normalise_cams(cams, labelled)
    label = pseudo_label(scores, labelled, new_classes, (height, width), threshold=float(cfg["threshold"]))
    return {"label": label, "cams": scores.cpu().numpy()}


# --- cache contract -----------------------------------------------------------------------------


def expected_provenance(cam: str, model_path: str | Path, split: Mapping, cam_cfg: Mapping) -> dict:
    """The provenance a pseudo-label cache of baseline ``cam`` must carry; what the consumer
    passes to :func:`pipeline.cache.open_cache`.

    Args:
        cam: ``cam``, ``vwe`` or ``iscam``.
        model_path: the ``model.pt`` written by ``train-cam`` (hashed).
        split: the step's split (``task``, ``protocol``, ``step``, ``new_classes``).
        cam_cfg: ``wsss.<cam>`` (``scales``, ``flip``, ``threshold``).
    Returns:
        ``{"kind", "cam", "model_sha256", "task", "protocol", "step", "new_classes", "background",
        "threshold", "scales", "flip", "version"}``; ``background`` is ``"threshold"`` (constant
        background score, ``threshold`` set) or ``"channel"`` (``iscam``, ``threshold`` None).
    Raises:
        FileNotFoundError: no model file.
    """
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"{model_path}: CAM model file not found")
    channel = cam == "iscam"
    return {
        "kind": "wsss_pseudo_labels",
        "cam": cam,
        "model_sha256": file_sha256(model_path),
        "task": split["task"],
        "protocol": split["protocol"],
        "step": int(split["step"]),
        "new_classes": [int(c) for c in split["new_classes"]],
        "background": "channel" if channel else "threshold",
        "threshold": None if channel else float(cam_cfg["threshold"]),
        "scales": [float(s) for s in cam_cfg["scales"]],
        "flip": bool(cam_cfg["flip"]),
        "version": __version__,
    }


def read_pseudo_label(reader: CacheReader, image_id: str) -> np.ndarray:
    """The hard pseudo-label of one image from a pseudo-label cache.

    Args:
        reader: from ``open_cache(path, expected_provenance(...))``.
        image_id: a training id of the step.
    Returns:
        (H, W) uint8 ndarray: 0 background or a new class id (255 would mark an unlabelled pixel;
        this stage writes none).
    Raises:
        CacheError: the id is not cached or its ``label`` is missing or not a 2-D uint8 array.
    """
    if image_id not in reader:
        raise CacheError(f"{reader.path}: no pseudo-label for image {image_id!r} ({len(reader)} images cached)")
    group = reader.handle["images"][image_id]
    if "label" not in group:
        raise CacheError(f"{reader.path}: image {image_id!r} has no 'label' dataset (keys: {sorted(group)})")
    label = group["label"][()]
    if label.dtype != np.uint8 or label.ndim != 2:
        raise CacheError(
            f"{reader.path}: image {image_id!r}: 'label' is {label.dtype} {label.shape}, expected (H, W) uint8"
        )
    return label


# --- stage --------------------------------------------------------------------------------------


def write_cache(
    net: nn.Module,
    split: dict,
    data_index: str,
    out: str | Path,
    provenance: dict,
    cam_cfg: Mapping,
    device: torch.device,
) -> None:
    """Pseudo-label every image of the split into ``out`` (resumable; finished atomically)."""
    dataset = step_dataset(data_index, split["ids"], transform=None)
    normalise = EvalTransform()
    with CacheWriter(out, provenance) as writer:
        todo = [i for i, image_id in enumerate(split["ids"]) if image_id not in writer.done]
        for i in tqdm(todo, desc="pseudo-labels", file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0):
            image_id = split["ids"][i]
            image = normalise(dataset[i])["image"].to(device)
            labels = split["labels"][image_id]
            entry = image_pseudo_label(net, image, labels, split["new_classes"], cam_cfg)
            classes = sorted(int(c) for c in labels if int(c) in split["new_classes"])
            writer.put(image_id, entry, attrs={"classes": np.asarray(classes, dtype=np.int64)})
        writer.finish({"num_images": len(split["ids"])})


def measure_quality(out: str | Path, provenance: dict, split: dict, data_index: str, tolerance) -> dict:
    """Region mIoU and contour F-score of the cached labels against the ground truth."""
    index = read_json(data_index)
    mask_dir = resolve_mask_dir(index["root"], index["mask_dir"])
    quality = MaskQuality(split["new_classes"], tolerance)
    with open_cache(out, provenance) as reader:
        for image_id in split["ids"]:
            gt = load_mask(mask_dir / f"{image_id}.png", image_id=image_id)
            quality.update(read_pseudo_label(reader, image_id), gt, image_id)
    return quality.result()


__all__ = [
    "condition_on_labels",
    "expected_provenance",
    "image_pseudo_label",
    "multiscale_cams",
    "normalise_cams",
    "pseudo_label",
    "read_pseudo_label",
]
