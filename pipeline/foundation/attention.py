"""Seed-guided self-attention of a self-supervised ViT, ``M_seeds`` of FMWISS (Sec. 3.2, Eq. 4).

For each labelled new class, N seed points are drawn at random from the foreground of the
binarised initial mask (:func:`sample_seeds`), and the rows of the last block's self-attention
``softmax(q K^T / sqrt(d))`` at those points are averaged over the n heads and the N seeds
(:func:`seed_attention`). ``[.]binary`` (top-K%) and the fusion with ``M_init`` happen at read time
(:mod:`pipeline.foundation.coseg`).

Models are timm ViTs built by name with ``dynamic_img_size=True`` (any input size that is a
multiple of the patch): DINO through timm's tags (``vit_small_patch16_224.dino``,
``vit_base_patch16_224.dino``, with ``pretrained: timm``), or iBOT / DINO official checkpoints from
a local file mapped onto timm's ViT (:func:`load_ssl_checkpoint`: backbone files, or the teacher
of a full training checkpoint); ``pretrained: none`` is random initialisation. At any input size
the position embedding is resampled by DINO/iBOT's rule (:func:`interpolate_pos_encoding`), not
timm's.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import types
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.checkpoint import UnsafeCheckpointError, load_checkpoint

log = logging.getLogger(__name__)

_IBOT = "https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot"
_DINO = "https://dl.fbaipublicfiles.com/dino"
#: Where the official checkpoints are (iBOT README "Pre-Trained Models", teacher backbones on
#: ImageNet-1K; DINO README), by timm architecture.
CHECKPOINT_URLS: dict[str, dict[str, str]] = {
    "ibot": {
        "vit_small_patch16_224": f"{_IBOT}/vits_16/checkpoint_teacher.pth",
        "vit_base_patch16_224": f"{_IBOT}/vitb_16/checkpoint_teacher.pth",
        "vit_large_patch16_224": f"{_IBOT}/vitl_16/checkpoint_teacher.pth",
    },
    "dino": {
        "vit_small_patch16_224": f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
        "vit_small_patch8_224": f"{_DINO}/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
        "vit_base_patch16_224": f"{_DINO}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
        "vit_base_patch8_224": f"{_DINO}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
    },
}
#: Keys of official checkpoints that are not part of the ViT backbone (projection heads, iBOT's
#: mask token); dropped by the loader.
_NON_BACKBONE = ("head.", "masked_embed", "mask_token", "last_layer")
_PREFIXES = ("module.", "backbone.", "encoder.")


def _download_hint(kind: str, model_name: str) -> str:
    arch = model_name.split(".")[0]
    url = CHECKPOINT_URLS.get(kind, {}).get(arch)
    where = f"download {url}" if url else f"download the official {kind} checkpoint of {arch}"
    return (
        f"{where} (a {kind} ViT checkpoint for timm's {arch}), set coseg.ssl.checkpoint to the "
        "local file, or set coseg.ssl.pretrained: none (random init, for tests)"
    )


def _backbone_file_hint(kind: str | None, arch: str) -> str:
    """Which official file to use for ``kind`` (``ibot`` | ``dino`` | None: both) and ``arch``."""
    hints = []
    if kind in (None, "dino"):
        url = CHECKPOINT_URLS["dino"].get(arch)
        name = url.rsplit("/", 1)[-1] if url else "dino_<arch>_pretrain.pth (e.g. dino_vitbase16_pretrain.pth)"
        hints.append(
            f"DINO: the backbone-only {name}{f' ({url})' if url else ''}, or DINO's full training "
            "checkpoint.pth (its 'teacher' weights are taken)"
        )
    if kind in (None, "ibot"):
        url = CHECKPOINT_URLS["ibot"].get(arch)
        hints.append(f"iBOT: checkpoint_teacher.pth{f' ({url})' if url else ''}")
    return "; ".join(hints)


def _checkpoint_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    """The backbone tensors of a loaded iBOT/DINO checkpoint object, keys as in timm's ViT."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "teacher", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: not a ViT state dict (expected tensors, possibly under 'state_dict' / 'teacher' / 'model')"
        )
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        if not key.startswith(_NON_BACKBONE):
            out[key] = value
    return out


def load_ssl_checkpoint(model: nn.Module, path: str | Path, kind: str | None = None) -> None:
    """Load an official iBOT or DINO ViT checkpoint into a timm ``VisionTransformer``.

    Key mapping: the tensors are taken from ``state_dict`` (iBOT's ``checkpoint_teacher.pth``),
    ``teacher`` (iBOT/DINO full training checkpoints, ``{"student", "teacher", "optimizer",
    "epoch", "args", ...}``: the teacher, as DINO's ``load_pretrained_weights`` with its default
    ``checkpoint_key="teacher"``; their ``args`` is an ``argparse.Namespace``, the one Python class
    allowed besides the safe loader's) or the top level (DINO's ``*_pretrain.pth``);
    the prefixes ``module.``, ``backbone.``, ``encoder.`` are stripped; projection heads
    (``head.*``, ``last_layer``) and the mask token (``masked_embed``) are dropped. The remaining
    names (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i.{norm1,attn.qkv,
    attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``) are timm's. ``pos_embed`` is resampled
    (``timm.layers.resample_abs_pos_embed``) when its grid differs from the model's.

    Args:
        model: a timm ViT of the checkpoint's architecture (e.g. ``vit_large_patch16_224``,
            ``num_classes=0``).
        path: the ``.pth`` file, read with the safe unpickler only
            (:func:`pipeline.checkpoint.load_checkpoint`).
        kind: ``"ibot"`` / ``"dino"`` (names the right file in errors), or None.
    Raises:
        FileNotFoundError: no such file; pipeline.checkpoint.CheckpointError (a ValueError): an
            empty, truncated or corrupt file, or one holding Python objects besides tensors
            (refused: it could run code; names the global); ValueError: not a state dict, or
            tensors missing / of another shape than the model's (names them).
    """
    from timm.layers import resample_abs_pos_embed

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"coseg.ssl.checkpoint {path}: file not found")
    try:
        # full training checkpoints also pickle their argparse args: a plain attribute holder
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = load_checkpoint(path, "cpu", what="coseg.ssl.checkpoint")
    except UnsafeCheckpointError as error:
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", "")
        raise UnsafeCheckpointError(f"{error}. Use the official file: {_backbone_file_hint(kind, arch)}") from None
    state = _checkpoint_state_dict(loaded, path)
    own = model.state_dict()
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=model.patch_embed.grid_size, num_prefix_tokens=prefix
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or wrong:
        raise ValueError(
            f"{path}: does not fit timm's {type(model).__name__} "
            f"({len(missing)} missing, e.g. {missing[:4]}; shape mismatch: "
            f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:4]]}); "
            "is coseg.ssl.model the checkpoint's architecture?"
        )
    if unexpected:
        log.info("%s: ignoring %d tensors not in the ViT: %s", path, len(unexpected), unexpected[:8])
    model.load_state_dict({k: state[k] for k in own})


def interpolate_pos_encoding(pos_embed: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Resample a ViT's position embedding to a patch grid with DINO's and iBOT's rule.

    DINO ``vision_transformer.py`` ``VisionTransformer.interpolate_pos_encoding`` (iBOT's
    ``models/vision_transformer.py`` is the same code): the N checkpoint positions form a
    √N × √N grid, resampled with ``F.interpolate(..., scale_factor=((h + 0.1) / √N,
    (w + 0.1) / √N), mode="bicubic")`` (``align_corners=False``, no antialias). With the scale
    factor given (not the output size), the output has floor(√N (h + 0.1) / √N) = h rows, but the
    sampling positions use the scale (h + 0.1) / √N, not h / √N; the "+ 0.1" is DINO's guard
    against floor() losing a row (facebookresearch/dino issue 8). timm's ``dynamic_img_size``
    (``resample_abs_pos_embed``) instead samples at the exact ratio h / √N with antialiasing, which
    gives other embeddings whenever the grid changes (448-px inputs: every image). As in DINO, the
    embedding is returned unchanged only when the grid has N positions *and* is square (a non-square
    grid of N positions is still resampled).

    Args:
        pos_embed: (1, P + N, C) float: the P prefix rows (DINO/iBOT: the class token), then the
            √N × √N grid in raster order.
        grid: (h, w) target patch grid (rows, columns: DINO's ``w0, h0`` of an image
            ``(B, C, w, h)``).
        num_prefix_tokens: P, rows before the grid (kept unchanged).
    Returns:
        (1, P + h * w, C): the prefix rows, then the resampled grid in raster order; ``pos_embed``
        itself when no resampling is needed.
    Raises:
        ValueError: the grid part of ``pos_embed`` is not square.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    count, dim = patches.shape[1], patches.shape[2]
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"interpolate_pos_encoding: {count} grid positions do not form a square grid")
    rows, cols = int(grid[0]), int(grid[1])
    if rows * cols == count and rows == cols:
        return pos_embed
    patches = F.interpolate(
        patches.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=((rows + 0.1) / side, (cols + 0.1) / side),
        mode="bicubic",
    )
    if tuple(patches.shape[-2:]) != (rows, cols):  # DINO asserts the same
        raise RuntimeError(f"interpolate_pos_encoding: got a {tuple(patches.shape[-2:])} grid, expected {grid}")
    return torch.cat([prefix, patches.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)], dim=1)


def _dino_pos_embed(self: nn.Module, x: Tensor) -> Tensor:
    """timm ``VisionTransformer._pos_embed`` with DINO/iBOT's resampling
    (:func:`interpolate_pos_encoding`): prepend the class token, add the position embedding of
    the input's patch grid. Installed on the SSL ViT by :func:`load_ssl`.

    ``x``: (B, h, w, C) patch embeddings (``dynamic_img_size``). ViTs that do not have DINO's
    layout (class token only, position embedding covering it) keep timm's own method.
    """
    layout_is_dinos = (
        x.ndim == 4
        and self.pos_embed is not None
        and self.cls_token is not None
        and getattr(self, "reg_token", None) is None
        and not getattr(self, "no_embed_class", False)
    )
    if not layout_is_dinos:
        return type(self)._pos_embed(self, x)
    batch, rows, cols, dim = x.shape
    pos_embed = interpolate_pos_encoding(self.pos_embed, (rows, cols), num_prefix_tokens=1)
    x = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, rows * cols, dim)], dim=1)
    return self.pos_drop(x + pos_embed)


def use_dino_pos_embed(model: nn.Module) -> nn.Module:
    """Make a timm ViT resample its position embedding as DINO and iBOT do, for every input
    grid (:func:`interpolate_pos_encoding`); returns ``model``."""
    model._pos_embed = types.MethodType(_dino_pos_embed, model)
    return model


def load_ssl(
    model_name: str = "vit_large_patch16_224",
    pretrained: str = "ibot",
    checkpoint: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build the self-supervised ViT of Eq. 4 (timm, ``dynamic_img_size=True``, no head), frozen.

    Its position embedding is resampled to the input's patch grid by DINO/iBOT's rule
    (:func:`use_dino_pos_embed`), not timm's: the weights are DINO's or iBOT's, and these are the
    embeddings they produce at, e.g., ``coseg.input_size: 448``.

    Args:
        model_name: timm name, optionally with a pretrained tag (``vit_base_patch16_224.dino``).
        pretrained: ``"ibot"`` / ``"dino"``: load the official checkpoint ``checkpoint``
            (:func:`load_ssl_checkpoint`); ``"timm"``: timm's weights for the tag (hub cache);
            ``"none"``: random init (seed torch first for a reproducible init).
        checkpoint: local ``.pth`` path for ``ibot`` / ``dino``.
        device: where to put the model.
    Returns:
        The model in eval mode, without gradients.
    Raises:
        FileNotFoundError: ``ibot``/``dino`` without an existing checkpoint (says where to
            download it); RuntimeError: timm cannot build or fetch the model; ValueError: a
            model without timm's ``Attention`` in its last block.
    """
    import timm

    if pretrained not in ("ibot", "dino", "timm", "none"):
        raise ValueError(f"coseg.ssl.pretrained: {pretrained!r} is not one of ['ibot', 'dino', 'timm', 'none']")
    if pretrained in ("ibot", "dino") and (not checkpoint or not Path(checkpoint).is_file()):
        given = f"{checkpoint} does not exist" if checkpoint else "no coseg.ssl.checkpoint given"
        raise FileNotFoundError(
            f"coseg.ssl.pretrained={pretrained} needs a local checkpoint ({given}): "
            + _download_hint(pretrained, model_name)
        )
    try:
        model = timm.create_model(model_name, pretrained=pretrained == "timm", num_classes=0, dynamic_img_size=True)
    except (RuntimeError, OSError, ValueError) as error:
        raise RuntimeError(
            f"coseg.ssl.model: timm cannot build {model_name!r} with pretrained="
            f"{pretrained!r} ({error}); tagged weights download on first use (needs "
            "network once), or use pretrained: ibot/dino with a local checkpoint"
        ) from error
    if pretrained in ("ibot", "dino"):
        load_ssl_checkpoint(model, checkpoint, pretrained)
    blocks = getattr(model, "blocks", None)
    if not blocks or not hasattr(blocks[-1], "attn") or not hasattr(blocks[-1].attn, "qkv"):
        raise ValueError(
            f"coseg.ssl.model {model_name!r}: expected a timm ViT whose last block has "
            "an Attention with a fused qkv projection"
        )
    use_dino_pos_embed(model)
    return model.to(device).eval().requires_grad_(False)


def ssl_mean_std(model: nn.Module, pretrained: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input normalisation: timm's pretrained config for ``pretrained: timm``, else ImageNet's
    (iBOT and DINO train with the ImageNet mean/std)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if pretrained == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(cfg.get("std", IMAGENET_DEFAULT_STD))
    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)


def last_block_qk(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor, float, tuple[int, int]]:
    """Queries and keys of the last block's self-attention, recomputed from its qkv weights.

    A forward pre-hook on ``model.blocks[-1].attn`` captures the block's normalised input
    ``x = norm1(z)`` during ``model.forward_features``; q and k are then computed from
    ``attn.qkv`` (and ``q_norm``/``k_norm``), independently of the (possibly fused) attention
    kernel timm uses.

    Args:
        model: timm ViT (:func:`load_ssl`).
        images: (B, 3, H, W) normalised, H and W multiples of the patch size.
    Returns:
        ``(q, k, scale, grid)``: q and k (B, n, L, d_head) with L = prefix tokens + h * w,
        ``scale = d_head ** -0.5`` and ``grid = (h, w)``.
    Raises:
        ValueError: H or W not a multiple of the patch size.
    """
    patch = model.patch_embed.patch_size
    height, width = images.shape[-2:]
    if height % patch[0] or width % patch[1]:
        raise ValueError(f"last_block_qk: input {height}x{width} is not a multiple of the patch {patch}")
    attn = model.blocks[-1].attn
    captured: list[Tensor] = []
    handle = attn.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model.forward_features(images)
    finally:
        handle.remove()
    x = captured[-1]
    batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return q, k, float(attn.scale), (height // patch[0], width // patch[1])


def seed_attention(model: nn.Module, images: Tensor, seeds: Tensor) -> Tensor:
    """Seed-guided attention ``1/N Σ_p 1/n Σ_heads S(x)`` (FMWISS Eq. 4, before ``[.]binary``).

    ``S(x)`` is the last block's self-attention ``softmax(q K^T / sqrt(d_head))`` over all tokens
    (class token included); its rows at the seed patches are read, the key columns of the patch
    tokens kept (as in DINO's attention maps), then averaged over the n heads and the valid seeds.

    Args:
        model: timm ViT (:func:`load_ssl`).
        images: (B, 3, H, W) normalised (:func:`ssl_mean_std`), H, W multiples of the patch.
        seeds: (B, K, N, 2) int (row, col) patch coordinates on the (H/patch, W/patch) grid;
            ``-1`` rows are padding (fewer seeds, or fewer classes, in that image).
    Returns:
        (B, K, h, w) float32 >= 0; all zeros for a class without a valid seed.
    Raises:
        ValueError: a seed outside the grid or a malformed ``seeds`` tensor.
    """
    q, k, scale, (h, w) = last_block_qk(model, images)
    batch, heads, _, dim = q.shape
    seeds = seeds.to(q.device).long()
    if seeds.ndim != 4 or seeds.shape[0] != batch or seeds.shape[-1] != 2:
        raise ValueError(f"seed_attention: seeds {tuple(seeds.shape)}; expected ({batch}, K, N, 2)")
    _, n_classes, n_seeds, _ = seeds.shape
    valid = (seeds >= 0).all(-1)  # (B, K, N)
    rows, cols = seeds[..., 0], seeds[..., 1]
    if bool(((rows >= h) | (cols >= w))[valid].any()):
        raise ValueError(f"seed_attention: a seed lies outside the {h}x{w} patch grid")
    prefix = q.shape[2] - h * w
    token = torch.where(valid, prefix + rows * w + cols, torch.zeros_like(rows)).reshape(batch, -1)
    q_rows = torch.gather(q, 2, token[:, None, :, None].expand(batch, heads, token.shape[1], dim))
    with torch.autocast(device_type=q.device.type, enabled=False):  # float32 under AMP too
        logits = (q_rows.float() * scale) @ k.float().transpose(-2, -1)  # (B, n, K*N, L)
        attention = logits.softmax(dim=-1)[..., prefix:].mean(dim=1)  # (B, K*N, h*w)
    attention = attention.reshape(batch, n_classes, n_seeds, h * w) * valid[..., None]
    count = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, K, 1)
    return (attention.sum(2) / count).reshape(batch, n_classes, h, w)


def seed_rng(seed: int, image_id: str) -> np.random.Generator:
    """The numpy Generator of an image's seed points: ``SeedSequence([seed, sha256(id)[:8]])``.

    Independent of the processing order, the batch and the process (Python's ``hash`` is salted;
    a digest is not).
    """
    digest = int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), digest]))


def sample_seeds(foreground: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the N seed points of one class uniformly from a mask's foreground, without replacement
    (FMWISS Sec. 3.2: "randomly sampled from the foreground of binarized M_init").

    Args:
        foreground: (h, w) bool mask (the binarised initial mask on the SSL patch grid).
        n: N, seeds per class.
        rng: the image's Generator (:func:`seed_rng`); classes are drawn in order from it.
    Returns:
        (n, 2) int64 (row, col), sorted in raster order; rows ``-1`` pad when the foreground has
        fewer than n pixels (all of it is used then).
    """
    foreground = np.asarray(foreground, dtype=bool)
    cells = np.flatnonzero(foreground)
    out = np.full((n, 2), -1, dtype=np.int64)
    take = min(n, cells.size)
    if take:
        chosen = np.sort(rng.choice(cells, size=take, replace=False))
        out[:take] = np.stack(np.unravel_index(chosen, foreground.shape), axis=1)
    return out


__all__ = [
    "CHECKPOINT_URLS",
    "interpolate_pos_encoding",
    "last_block_qk",
    "load_ssl",
    "load_ssl_checkpoint",
    "sample_seeds",
    "seed_attention",
    "seed_rng",
    "ssl_mean_std",
    "use_dino_pos_embed",
]
