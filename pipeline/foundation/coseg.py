"""FMWISS pre-training based co-segmentation, the read-time half (Sec. 3.2, Eq. 3-5).

The ``coseg`` stage (:mod:`pipeline.foundation.compute`) runs the foundation models once and caches,
per training image of a step and per labelled new class, two score maps at feature resolution:

* ``clip``: the pixel-text scores ``M_init`` of Eq. 3 (cosine similarities, in [-1, 1]);
* ``attention``: the seed-guided self-attention of Eq. 4 *before* ``[.]binary`` (averaged over
  heads and seeds, divided by its maximum so that float16 keeps its precision).

Everything that has hyper-parameters ablated in the paper happens here, when a consumer reads the
cache, so that changing them never re-runs CLIP or the SSL ViT:

* binarisation of ``M_init`` (``clip_threshold``; the paper does not give it, see
  :func:`binarize_initial_mask`),
* ``[.]binary`` of Eq. 4 with K (``top_k``, ``top_k_rule``; see :func:`binarize_top_k`),
* the fusion operator of Eq. 5 (``fusion``: union, intersection, none; Table 4).

:func:`expected_provenance` lists only the settings that change the cached scores; the read-time
keys above (:data:`READ_TIME_KEYS`, alias :data:`READ_KEYS` for the Snakemake rules) are
deliberately left out of it.

Config section ``coseg`` (every key; defaults are the paper's where it gives one)::

    source: clip            # clip: CLIP (MaskCLIP) initial mask + SSL seed attention | oracle: GT masks, no model
    clip:
      model: ViT-B-16       # open_clip architecture; Sec. 4.2: CLIP ViT-B with MaskCLIP's mechanism
      pretrained: openai    # open_clip pretrained tag | path to an open_clip checkpoint | none (random init)
      templates: openai     # prompt ensemble of Eq. 2: openai (CLIP's 80) | simple (7) | photo (1)
    ssl:
      model: vit_large_patch16_224   # timm ViT; Sec. 4.2: iBOT ViT-L/16 by default
      pretrained: ibot      # ibot | dino (official .pth in `checkpoint`) | timm (hub weights of model's tag) | none
      checkpoint: null      # local path of the iBOT/DINO checkpoint (pretrained ibot or dino)
    input_size: 448         # long side fed to both models, px, sides rounded to whole patches (our choice)
    n_seeds: 9              # N of Eq. 4 (Sec. 3.2, Fig. 5)
    seed: 0                 # seed points: numpy Generator seeded with (seed, image id); also seeds a random init
    seed_threshold: 0.5     # binarisation of M_init whose foreground the seeds are drawn from (compute time)
    clip_threshold: 0.5     # binarisation of M_init in the fused mask (read time)
    top_k: 0.7              # K of [.]binary in Eq. 4 (K = 70 %, Sec. 3.2, Table 13; read time)
    top_k_rule: quantile    # how K sets T: quantile | locations | mass (read time; see binarize_top_k)
    fusion: union           # Eq. 5: union | intersection | none (= M_init only) (read time; Table 4)
    batch_size: 8           # images per forward pass (no effect on the results)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import __version__
from pipeline.config import validated_section
from pipeline.foundation.maskclip import resolve_quick_gelu
from pipeline.foundation.settings import READ_KEYS, READ_TIME_KEYS
from pipeline.io import file_sha256 as io_file_sha256

SOURCES = ("clip", "oracle")
FUSIONS = ("union", "intersection", "none")
TOP_K_RULES = ("quantile", "locations", "mass")
TEMPLATE_SETS = ("openai", "simple", "photo")
SSL_PRETRAINED = ("ibot", "dino", "timm", "none")


#: Bumped when what the foundation models compute for the same settings changes, so older caches
#: are recomputed: 2 = DINO/iBOT's position-embedding interpolation, MaskCLIP's VOC class names.
COSEG_ALGORITHM = 2


def _check_choice(value: Any, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        raise ValueError(f"coseg.{key}: {value!r} is not one of {list(choices)}")


def _check_fraction(value: Any, key: str, closed: bool = False) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0)
    )
    if not ok:
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(f"coseg.{key}: expected a number in {interval}, got {value!r}")


def resolve_config(params: Mapping | None) -> dict:
    """The ``coseg`` config section with every default filled in and every value checked.

    Args:
        params: the section as given (may be partial or None); nested ``clip`` / ``ssl`` mappings.
    Returns:
        A new dict with every key of config.yaml's ``coseg`` (the one source of the defaults,
        :func:`pipeline.config.validated_section`).
    Raises:
        ValueError: an unknown key or a bad value (the message names ``coseg.<key>`` and the value).
    """
    cfg = validated_section("coseg", params)
    _check_choice(cfg["source"], SOURCES, "source")
    _check_choice(cfg["fusion"], FUSIONS, "fusion")
    _check_choice(cfg["top_k_rule"], TOP_K_RULES, "top_k_rule")
    _check_choice(cfg["clip"]["templates"], TEMPLATE_SETS, "clip.templates")
    _check_choice(cfg["ssl"]["pretrained"], SSL_PRETRAINED, "ssl.pretrained")
    _check_fraction(cfg["top_k"], "top_k")
    _check_fraction(cfg["clip_threshold"], "clip_threshold", closed=True)
    _check_fraction(cfg["seed_threshold"], "seed_threshold", closed=True)
    for key, low in (("input_size", 16), ("n_seeds", 1), ("batch_size", 1), ("seed", 0)):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"coseg.{key}: expected an integer >= {low}, got {value!r}")
    for key in ("model", "pretrained"):
        if not isinstance(cfg["clip"][key], str) or not cfg["clip"][key]:
            raise ValueError(f"coseg.clip.{key}: expected a non-empty string, got {cfg['clip'][key]!r}")
    if not isinstance(cfg["ssl"]["model"], str) or not cfg["ssl"]["model"]:
        raise ValueError(f"coseg.ssl.model: expected a timm model name, got {cfg['ssl']['model']!r}")
    return cfg


# --------------------------------------------------------------------------------------------
# Provenance


def step_attrs(split: Mapping) -> dict:
    """What a coseg cache was computed for, as the ``coseg`` stage records it in the cache's root
    attributes (:meth:`pipeline.cache.CacheWriter.finish`) and a reader checks it
    (:meth:`pipeline.cache.CacheReader.require_attrs`): a cache of another task, protocol, step
    or class set is refused even where its ids cover the split's.

    Args:
        split: a ``step{t}.json`` of the splits stage (``task``, ``protocol``, ``step``,
            ``new_classes``).
    Returns:
        ``{"task": str, "protocol": str, "step": int, "new_classes": [int, ...]}`` (background
        left out of the classes).
    """
    return {
        "task": str(split.get("task")),
        "protocol": str(split.get("protocol")),
        "step": int(split.get("step", -1)),
        "new_classes": [int(c) for c in split.get("new_classes", []) if int(c) != 0],
    }


def require_step(reader, split: Mapping) -> None:
    """Check that an open coseg cache (a :class:`pipeline.cache.CacheReader`) was computed for
    ``split`` (:func:`step_attrs`).

    Raises:
        CacheError: naming the cache, the differing task / protocol / step / new classes and the
            step it was read for.
    """
    attrs = step_attrs(split)
    reader.require_attrs(
        attrs, f"the co-segmentation cache of {attrs['task']} {attrs['protocol']} step {attrs['step']}"
    )


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """:func:`pipeline.io.file_sha256`, memoised on (resolved path, size, mtime)."""
    return io_file_sha256(path)


def file_sha256(path: str | os.PathLike, key: str = "checkpoint") -> str:
    """``"sha256:<hex>"`` of a weights file (memoised on path, size and mtime).

    Raises:
        FileNotFoundError: the file does not exist (names ``key`` and the path).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"coseg.{key}: weights file {path} not found")
    stat = path.stat()
    return "sha256:" + _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def looks_like_path(value: str) -> bool:
    """Whether an open_clip ``pretrained`` value names a file rather than a tag."""
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def expected_provenance(cfg: Mapping) -> dict:
    """The provenance a coseg cache must carry to be valid for ``cfg`` (see :mod:`pipeline.cache`).

    Only settings that change the cached scores are included: the source, the CLIP model and its
    weights (open_clip tag, or ``sha256:`` of a local file), the prompt templates, the SSL model
    and its weights (``sha256:`` of the checkpoint when one is loaded), the input size, N, the
    seed and ``seed_threshold`` (where the seeds are drawn), and ``pipeline.__version__``. The
    read-time keys (:data:`READ_TIME_KEYS`: thresholds of the masks, K, fusion) and
    ``batch_size`` are not: changing them never invalidates the cache.

    Args:
        cfg: the ``coseg`` section (resolved with :func:`resolve_config` if partial).
    Returns:
        A JSON-serialisable dict.
    Raises:
        ValueError: bad config; FileNotFoundError: a configured weights file is missing.
    """
    cfg = resolve_config(cfg)
    provenance = {
        "stage": "coseg",
        "algorithm": COSEG_ALGORITHM,
        "source": cfg["source"],
        "n_seeds": cfg["n_seeds"],
        "seed": cfg["seed"],
        "seed_threshold": cfg["seed_threshold"],
        "version": __version__,
    }
    if cfg["source"] == "oracle":
        return provenance
    clip, ssl = cfg["clip"], cfg["ssl"]
    clip_weights = clip["pretrained"]
    if clip_weights != "none" and looks_like_path(clip_weights):
        clip_weights = file_sha256(clip_weights, "clip.pretrained")
    ssl_weights = None
    if ssl["pretrained"] in ("ibot", "dino") and ssl["checkpoint"]:
        ssl_weights = file_sha256(ssl["checkpoint"], "ssl.checkpoint")
    provenance.update(
        {
            "clip_model": clip["model"],
            "clip_pretrained": clip_weights,
            "clip_templates": clip["templates"],
            "clip_quick_gelu": resolve_quick_gelu(clip["model"], clip["pretrained"], clip["quick_gelu"]),
            "ssl_model": ssl["model"],
            "ssl_pretrained": ssl["pretrained"],
            "ssl_checkpoint": ssl_weights,
            "input_size": cfg["input_size"],
        }
    )
    return provenance


# --------------------------------------------------------------------------------------------
# Post-processing (read time)


def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """Per-class min-max normalisation of score maps over the image.

    Args:
        scores: (K, H, W) float scores (e.g. cosine scores of Eq. 3).
    Returns:
        (K, H, W) float32 in [0, 1]; ``(s - min) / (max - min)`` per class, 0 where a map is
        constant.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape[0] == 0:
        return scores.copy()
    low = scores.min(axis=(1, 2), keepdims=True)
    span = scores.max(axis=(1, 2), keepdims=True) - low
    out = np.zeros_like(scores)
    np.divide(scores - low, span, out=out, where=span > 0)
    return out


def binarize_initial_mask(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binarised initial mask ``[M_init]`` (FMWISS Sec. 3.2; the paper gives no threshold).

    A pixel is foreground of class k when its min-max normalised score for k is above
    ``threshold`` and, if the image has several labelled classes, k has the highest raw score
    there (the argmax over the image's classes that makes ``M_init`` "initial segmentation results
    with category information"). Normalising per image makes one threshold usable for cosine
    scores whose range varies from image to image (CAM practice); 0.5 is our choice.

    Args:
        scores: (K, H, W) float scores ``M_init`` of the image's K labelled classes (Eq. 3).
        threshold: in [0, 1], applied to the normalised scores (strictly greater).
    Returns:
        (K, H, W) bool; masks of different classes never overlap.
    """
    scores = np.asarray(scores, dtype=np.float32)
    foreground = normalize_scores(scores) > threshold
    if scores.shape[0] > 1:
        winner = scores.argmax(axis=0)
        foreground &= winner[None] == np.arange(scores.shape[0])[:, None, None]
    return foreground


def seed_foreground(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Where the N seeds of each class are drawn: the foreground of the binarised ``M_init``
    (FMWISS Sec. 3.2; :func:`binarize_initial_mask` with ``seed_threshold``).

    Fallbacks so that every class gets seeds (the image-level label says it is present): a class
    whose binarised mask is empty (it never wins the argmax) uses its own normalised scores above
    the threshold; a constant map uses every location.

    Args:
        scores: (K, h, w) float ``M_init`` on the SSL model's patch grid.
        threshold: in [0, 1], on the min-max normalised scores.
    Returns:
        (K, h, w) bool, never empty for h * w > 0.
    """
    foreground = binarize_initial_mask(scores, threshold)
    normalised = normalize_scores(scores)
    for k in range(foreground.shape[0]):
        if not foreground[k].any():
            foreground[k] = normalised[k] > threshold
        if not foreground[k].any():
            foreground[k] = True
    return foreground


def binarize_top_k(attention: np.ndarray, k: float = 0.7, rule: str = "quantile") -> np.ndarray:
    """``[.]binary`` of Eq. 4: keep the locations of each map above a threshold T set by K.

    FMWISS Sec. 3.2 sets "all the values greater than the threshold T to 1, otherwise 0. T is
    dynamically updated to keep the top K% (K = 70 by default) locations". Read literally that
    keeps 70 % of the image; Appendix A.3 says the opposite direction ("preserving too little
    (K = 90 %) ... keeping too much (K = 60 %)") and Table 13 shows K = 90 closest to no fusion
    (Table 4, "None"), which fits only T = the K-th percentile. Hence the rules:

    * ``quantile`` (default): T = K-quantile of the map, keep values > T, i.e. the top
      (1 - K) of the locations (30 % for K = 0.7). Agrees with Appendix A.3 and Table 13.
    * ``locations``: the main text read literally, T = (1 - K)-quantile: the top K of locations.
    * ``mass``: DINO's visualisation (Caron et al. 2021): the fewest highest locations holding a
      fraction K of the map's total mass (cumulative sum of the ascending sort > 1 - K).

    Quantiles use numpy's linear interpolation; ties at T are dropped (strictly greater).

    Args:
        attention: (H, W) or (K, H, W) non-negative float maps (binarised per map).
        k: K as a fraction in (0, 1).
        rule: ``"quantile"``, ``"locations"`` or ``"mass"``.
    Returns:
        bool array of the shape of ``attention``.
    Raises:
        ValueError: unknown rule or K outside (0, 1).
    """
    if rule not in TOP_K_RULES:
        raise ValueError(f"top_k_rule {rule!r} is not one of {list(TOP_K_RULES)}")
    if not 0.0 < k < 1.0:
        raise ValueError(f"top_k {k!r}: expected a fraction in (0, 1)")
    attention = np.asarray(attention, dtype=np.float64)
    maps = attention.reshape((-1,) + attention.shape[-2:]) if attention.ndim >= 2 else attention
    flat = maps.reshape(maps.shape[0], -1)
    if flat.shape[1] == 0:
        return np.zeros(attention.shape, dtype=bool)
    if rule in ("quantile", "locations"):
        q = k if rule == "quantile" else 1.0 - k
        threshold = np.quantile(flat, q, axis=1, keepdims=True)
        keep = flat > threshold
    else:
        order = np.argsort(flat, axis=1, kind="stable")
        values = np.take_along_axis(flat, order, axis=1)
        total = values.sum(axis=1, keepdims=True)
        cumulative = np.divide(np.cumsum(values, axis=1), total, out=np.zeros_like(values), where=total > 0)
        sorted_keep = (cumulative > 1.0 - k) & (total > 0)
        keep = np.zeros_like(sorted_keep)
        np.put_along_axis(keep, order, sorted_keep, axis=1)
    return keep.reshape(attention.shape)


def fuse_masks(initial: np.ndarray, seeds: np.ndarray, fusion: str = "union") -> np.ndarray:
    """``M_refine = M_init ∪ M_seeds`` (FMWISS Eq. 5), or the ablated operators of Table 4.

    Args:
        initial: (K, H, W) bool binarised ``M_init``.
        seeds: (K, H, W) bool binarised ``M_seeds``.
        fusion: ``"union"`` (paper default), ``"intersection"`` or ``"none"`` (``M_init`` only).
    Returns:
        (K, H, W) bool (a new array).
    Raises:
        ValueError: unknown operator or shapes that differ.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion {fusion!r} is not one of {list(FUSIONS)}")
    initial, seeds = np.asarray(initial, dtype=bool), np.asarray(seeds, dtype=bool)
    if initial.shape != seeds.shape:
        raise ValueError(f"fuse_masks: initial mask {initial.shape} and seed mask {seeds.shape} differ")
    if fusion == "union":
        return initial | seeds
    if fusion == "intersection":
        return initial & seeds
    return initial.copy()


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of feature-resolution maps to the image size (``align_corners=False``).

    Args:
        maps: (K, h, w) float (float16 as cached is fine).
        size: (H, W) target size.
    Returns:
        (K, H, W) float32 (a copy; unchanged values when the size already matches).
    """
    maps = np.asarray(maps, dtype=np.float32)
    height, width = int(size[0]), int(size[1])
    if maps.ndim != 3:
        raise ValueError(f"upsample: expected (K, h, w) maps, got shape {maps.shape}")
    if maps.shape[0] == 0:
        return np.zeros((0, height, width), np.float32)
    if maps.shape[1:] == (height, width):
        return maps.copy()
    tensor = torch.from_numpy(maps)[None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0].numpy()


def _read_cfg(cfg: Mapping | None) -> dict:
    cfg = dict(cfg or {})
    defaults = validated_section("coseg")
    out = {key: cfg.get(key, defaults[key]) for key in READ_TIME_KEYS}
    _check_choice(out["fusion"], FUSIONS, "fusion")
    _check_choice(out["top_k_rule"], TOP_K_RULES, "top_k_rule")
    _check_fraction(out["top_k"], "top_k")
    _check_fraction(out["clip_threshold"], "clip_threshold", closed=True)
    return out


def _arrays(arrays: Mapping[str, np.ndarray]) -> tuple[list[int], np.ndarray, np.ndarray]:
    missing = [key for key in ("classes", "clip", "attention") if key not in arrays]
    if missing:
        raise KeyError(f"coseg cache entry lacks dataset(s) {missing}; has {sorted(arrays)}")
    classes = [int(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
    clip, attention = np.asarray(arrays["clip"]), np.asarray(arrays["attention"])
    if clip.shape[0] != len(classes) or attention.shape[0] != len(classes):
        raise ValueError(
            f"coseg cache entry: {len(classes)} classes but clip {clip.shape} and "
            f"attention {attention.shape}; expected (K, h, w) with K = {len(classes)}"
        )
    return classes, clip, attention


def coseg_maps(arrays: Mapping[str, np.ndarray], cfg: Mapping | None, size: tuple[int, int]) -> dict:
    """Every intermediate of the co-segmentation of one cached image, at image resolution.

    Args:
        arrays: one image's cache entry (``classes`` (K,), ``clip`` (K, hc, wc), ``attention``
            (K, hs, ws)), e.g. ``CacheReader.get(id)``.
        cfg: the ``coseg`` section; only the read-time keys are used (defaults for missing ones).
        size: (H, W) of the image.
    Returns:
        ``{"classes": list[int], "scores": (K,H,W) float32 normalised M_init, "attention":
        (K,H,W) float32, "initial": (K,H,W) bool, "seeds": (K,H,W) bool, "fused": (K,H,W) bool}``.
        Score maps are upsampled before binarisation, so masks have smooth borders.
    Raises:
        KeyError / ValueError: a malformed entry or config value (named).
    """
    read = _read_cfg(cfg)
    classes, clip, attention = _arrays(arrays)
    clip_up = upsample(clip, size)
    attention_up = upsample(attention, size)
    initial = binarize_initial_mask(clip_up, read["clip_threshold"])
    seeds = binarize_top_k(attention_up, read["top_k"], read["top_k_rule"])
    return {
        "classes": classes,
        "scores": normalize_scores(clip_up),
        "attention": attention_up,
        "initial": initial,
        "seeds": seeds,
        "fused": fuse_masks(initial, seeds, read["fusion"]),
    }


def coseg_masks(
    arrays: Mapping[str, np.ndarray], cfg: Mapping | None, size: tuple[int, int]
) -> tuple[list[int], np.ndarray]:
    """The refined masks ``M_refine`` (FMWISS Eq. 5) of one cached image at image resolution.

    Args:
        arrays: one image's cache entry (see :func:`coseg_maps`).
        cfg: the ``coseg`` section (read-time keys: ``clip_threshold``, ``top_k``, ``top_k_rule``,
            ``fusion``; ``fusion: none`` returns the binarised ``M_init``).
        size: (H, W) of the image.
    Returns:
        ``(classes, masks)``: the K labelled new classes and (K, H, W) bool masks.
    """
    maps = coseg_maps(arrays, cfg, size)
    return maps["classes"], maps["fused"]


def label_map(classes: Sequence[int], masks: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """One label map from per-class masks (for measuring their quality).

    Args:
        classes: K class indices in 1..254.
        masks: (K, H, W) bool.
        scores: optional (K, H, W) float; where masks overlap the class with the higher score
            wins (ties and ``scores=None``: the first class in ``classes``).
    Returns:
        (H, W) uint8: 0 where no mask is set, else the class index.
    Raises:
        ValueError: shapes that do not match, or a class outside 1..254.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[0] != len(classes):
        raise ValueError(f"label_map: masks {masks.shape} do not match {len(classes)} classes; expected (K, H, W)")
    bad = [c for c in classes if not 0 < int(c) < 255]
    if bad:
        raise ValueError(f"label_map: class {bad[0]} outside 1..254")
    if masks.shape[0] == 0:
        return np.zeros(masks.shape[1:], dtype=np.uint8)
    if scores is None:
        ranked = masks.astype(np.float32)
    else:
        scores = np.asarray(scores, dtype=np.float32)
        if scores.shape != masks.shape:
            raise ValueError(f"label_map: scores {scores.shape} differ from masks {masks.shape}")
        ranked = np.where(masks, scores, -np.inf)
    winner = ranked.argmax(axis=0)
    lut = np.asarray(classes, dtype=np.uint8)
    return np.where(masks.any(axis=0), lut[winner], 0).astype(np.uint8)


def coseg_label_maps(
    arrays: Mapping[str, np.ndarray], cfg: Mapping | None, size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """(H, W) uint8 label maps of the ``initial``, ``seeds`` and ``fused`` masks of one image.

    Overlaps between classes go to the higher normalised CLIP score (``seeds``: the higher seed
    attention). See :func:`coseg_maps` for the arguments.
    """
    maps = coseg_maps(arrays, cfg, size)
    classes = maps["classes"]
    return {
        "initial": label_map(classes, maps["initial"], maps["scores"]),
        "seeds": label_map(classes, maps["seeds"], maps["attention"]),
        "fused": label_map(classes, maps["fused"], maps["scores"]),
    }


__all__ = [
    "READ_KEYS",
    "READ_TIME_KEYS",
    "binarize_initial_mask",
    "binarize_top_k",
    "coseg_label_maps",
    "coseg_maps",
    "coseg_masks",
    "expected_provenance",
    "file_sha256",
    "fuse_masks",
    "label_map",
    "normalize_scores",
    "require_step",
    "resolve_config",
    "seed_foreground",
    "step_attrs",
    "upsample",
]
