"""CLIP dense pixel-text scores, the initial mask ``M_init`` of FMWISS (Sec. 3.2, Eq. 1-3).

FMWISS Sec. 4.2 uses "MaskCLIP's mechanism based on the pre-trained CLIP with ViT-B": the image
encoder of an open_clip ViT (built by architecture name and pretrained tag, e.g. ``ViT-B-16`` /
``openai``) is run on the whole image and, in its *last* transformer block, the patch tokens take
the value path only (no query-key attention; Zhou et al., "Extract Free Dense Labels from CLIP",
ECCV 2022). The patch features are then projected into the joint space (``ln_post`` and the visual
projection ``proj``), L2-normalised (Eq. 1) and compared with the prompt-ensembled, normalised text
embeddings of the image's classes (Eq. 2) by a dot product (Eq. 3).

open_clip is imported lazily (it is slow to import), so that reading a cache never pays for it.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.data.classes import VOC_CLASSES
from pipeline.data.coco_classes import COCO_TO_VOC, PAPER_ORDER

log = logging.getLogger(__name__)

#: The 20 VOC object classes as MaskCLIP names them for its text embeddings (chongzhou96/MaskCLIP,
#: ``tools/maskclip_utils/prompt_engineering.py``, the script that writes the ``*_clip_text.pth``
#: classifiers MaskCLIP uses): ``voc_classes = ['airplane', 'bicycle', 'bird', 'boat', 'bottle',
#: 'bus', 'car', 'cat', 'chair', 'cow', 'dining table', 'dog', 'horse', 'motorbike', 'person',
#: 'potted plant', 'sheep', 'sofa', 'train', 'tv monitor']``, in VOC's index order. (CLIP's own
#: ``data/prompts.md`` PascalVOC2007 list keeps VOC's file names, 'aeroplane', 'diningtable',
#: 'pottedplant', 'tvmonitor', and another order; FMWISS uses MaskCLIP's mechanism, so MaskCLIP's.)
MASKCLIP_VOC_CLASSES: tuple[str, ...] = (
    "airplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv monitor",
)
#: Text name of every VOC class index (1..20 from :data:`MASKCLIP_VOC_CLASSES`; 0 is background,
#: never prompted).
CLIP_CLASS_NAMES: dict[int, str] = {0: VOC_CLASSES[0], **dict(enumerate(MASKCLIP_VOC_CLASSES, start=1))}


def prompt_templates(name: str) -> tuple:
    """open_clip's prompt templates for the ensemble of Eq. 2 (``prompt(.)`` "as in [42]").

    Args:
        name: ``"openai"``: CLIP's 80 ImageNet templates (``OPENAI_IMAGENET_TEMPLATES``, the
            paper's choice); ``"simple"``: open_clip's 7 ``SIMPLE_IMAGENET_TEMPLATES``;
            ``"photo"``: the single template "a photo of a {}.".
    Returns:
        A tuple of callables ``str -> str``.
    Raises:
        ValueError: unknown name.
    """
    from open_clip import zero_shot_metadata as meta

    if name == "openai":
        return tuple(meta.OPENAI_IMAGENET_TEMPLATES)
    if name == "simple":
        return tuple(meta.SIMPLE_IMAGENET_TEMPLATES)
    if name == "photo":
        return (lambda c: f"a photo of a {c}.",)
    raise ValueError(f"coseg.clip.templates: {name!r} is not one of ['openai', 'simple', 'photo']")


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``; OpenAI's original CLIP
    ``ViT-B-16.pt`` is one): a zip with a ``constants.pkl`` record or a ``code/`` folder, which a
    ``torch.save`` file never has."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in f"/{name}" for name in names)


def _torchscript_error(path: str) -> ValueError:
    return ValueError(
        f"coseg.clip.pretrained={path!r} is a TorchScript archive (as OpenAI's original ViT-B-16.pt), "
        "which the safe loader does not read (it can run code). Either set coseg.clip.pretrained: openai "
        "(open_clip downloads OpenAI's weights and converts them itself; cached after the first use), or "
        "convert the file once, in a session where you trust it: "
        "import torch; sd = torch.jit.load(PATH, map_location='cpu').state_dict(); "
        "[sd.pop(k, None) for k in ('input_resolution', 'context_length', 'vocab_size')]; "
        "torch.save(sd, 'ViT-B-16-openai.pt') - then set coseg.clip.pretrained to the new file and "
        "coseg.clip.quick_gelu: true (OpenAI's CLIP was trained with QuickGELU)"
    )


def resolve_quick_gelu(model_name: str, pretrained: str | None, quick_gelu: bool | None = None) -> bool:
    """Whether the CLIP model is built with QuickGELU (``x · σ(1.702 x)``, OpenAI's activation)
    instead of exact GELU; a model run with the other activation than its weights were trained
    with gives wrong features without any error.

    Args:
        model_name: open_clip architecture. A ``*-quickgelu`` architecture always has QuickGELU.
        pretrained: open_clip tag, local file, or ``none`` / None.
        quick_gelu: ``coseg.clip.quick_gelu``: True / False, or None to infer it: from the tag's
            open_clip config (``openai``: true; other tags of plain architectures: false), false
            for random init, and *required* for a local file (its tensors do not record the
            activation).
    Returns:
        The activation to build: True for QuickGELU.
    Raises:
        ValueError: a local file without ``quick_gelu``; ``quick_gelu: false`` with a QuickGELU
            architecture.
    """
    from open_clip import get_model_config
    from open_clip.pretrained import get_pretrained_cfg

    if bool((get_model_config(model_name) or {}).get("quick_gelu", False)):
        if quick_gelu is False:
            raise ValueError(
                f"coseg.clip.quick_gelu: false, but {model_name!r} is a QuickGELU architecture; "
                "use the architecture without '-quickgelu', or quick_gelu: true"
            )
        return True
    weights = None if pretrained in (None, "none") else pretrained
    tag = get_pretrained_cfg(model_name, weights) if weights else {}
    if quick_gelu is not None:
        if tag and bool(tag.get("quick_gelu", False)) != bool(quick_gelu):
            log.warning(
                "coseg.clip.quick_gelu=%s differs from open_clip's setting for %s/%s (%s)",
                quick_gelu,
                model_name,
                weights,
                tag.get("quick_gelu", False),
            )
        return bool(quick_gelu)
    if weights is None or tag:
        return bool(tag.get("quick_gelu", False))
    raise ValueError(
        f"coseg.clip.quick_gelu is required for the local checkpoint coseg.clip.pretrained={pretrained!r}: "
        "its tensors do not say which activation it was trained with. Set true for OpenAI's CLIP weights "
        "(converted from OpenAI's ViT-B-16.pt, or open_clip's 'openai' files), false for weights trained "
        "with exact GELU (e.g. open_clip's LAION / DataComp checkpoints of non-quickgelu architectures)"
    )


def load_clip(
    model_name: str = "ViT-B-16",
    pretrained: str = "openai",
    device: torch.device | str = "cpu",
    quick_gelu: bool | None = None,
) -> tuple[nn.Module, object]:
    """Build an open_clip model and its tokenizer, in eval mode with frozen weights.

    Args:
        model_name: open_clip architecture (``open_clip.list_models()``), e.g. ``"ViT-B-16"``.
        pretrained: an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``...; the
            weights come from open_clip's cache or the hub), a path to a local checkpoint file
            (a state dict; TorchScript archives are refused with how to convert them), or
            ``"none"`` for random initialisation (same code path otherwise; seed torch first for a
            reproducible init).
        device: where to put the model.
        quick_gelu: ``coseg.clip.quick_gelu`` (:func:`resolve_quick_gelu`): None follows the tag
            (QuickGELU for ``openai``) and is an error for a local file.
    Returns:
        ``(model, tokenizer)``.
    Raises:
        RuntimeError: the weights cannot be loaded (message says how to get them);
            ValueError: a TorchScript file, ``quick_gelu`` missing for a local file, or an
            architecture without a ViT image tower usable by :func:`maskclip_features`.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    weights = None if pretrained in (None, "none") else pretrained
    if weights and not get_pretrained_cfg(model_name, weights) and ":" not in model_name:
        if not Path(weights).is_file():
            raise RuntimeError(
                f"coseg.clip.pretrained={pretrained!r}: neither an open_clip tag of {model_name!r} "
                "(open_clip.list_pretrained_tags_by_model) nor an existing checkpoint file; offline, put the "
                "checkpoint file on disk and set coseg.clip.pretrained to its path, or use 'none' (random init, "
                "for tests)"
            )
        if is_torchscript_archive(weights):
            raise _torchscript_error(weights)
    # OpenAI's weights were trained with QuickGELU, which open_clip's "ViT-B-16" config does not
    # use unless told (it only warns for a tag, and says nothing for a local file).
    force_quick_gelu = resolve_quick_gelu(model_name, weights, quick_gelu)
    try:
        model = open_clip.create_model(model_name, pretrained=weights, device=device, force_quick_gelu=force_quick_gelu)
    except (RuntimeError, OSError, ValueError) as error:
        raise RuntimeError(
            f"coseg.clip: cannot build open_clip model {model_name!r} with pretrained={pretrained!r} "
            f"({error}). Tags download on first use (needs network once; then cached); offline, put "
            "the checkpoint file on disk and set coseg.clip.pretrained to its path, or use 'none' "
            "(random init, for tests)"
        ) from error
    _check_vit(model.visual, model_name)
    model.eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(model_name)


def _check_vit(visual: nn.Module, model_name: str) -> None:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"coseg.clip.model {model_name!r}: image tower is {type(visual).__name__}; "
            "MaskCLIP's value path needs an open_clip VisionTransformer (ViT-*)"
        )
    block = visual.transformer.resblocks[-1]
    if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
        raise ValueError(
            f"coseg.clip.model {model_name!r}: last block is {type(block).__name__}; "
            "expected open_clip's ResidualAttentionBlock with nn.MultiheadAttention"
        )
    if visual.attn_pool is not None or visual.final_ln_after_pool:
        raise ValueError(
            f"coseg.clip.model {model_name!r}: attentional pooling / LN after pooling "
            "is not supported by the MaskCLIP path"
        )


def clip_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation constants of an open_clip model's image tower (OpenAI's by default)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    return tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), tuple(cfg.get("std", OPENAI_DATASET_STD))


def interpolate_pos_embed(pos_embed: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Resize a ViT's learned positional embedding to another patch grid (MaskCLIP's resize).

    Args:
        pos_embed: (1 + g0 * g1, C) class-token row then the grid rows in raster order.
        grid: (g0, g1) grid the embedding was trained at.
        size: (h, w) target grid.
    Returns:
        (1 + h * w, C): the class row unchanged, the grid resized bicubically
        (``align_corners=False``); the input itself when ``size == grid``.
    Raises:
        ValueError: ``pos_embed`` does not hold ``1 + g0 * g1`` rows.
    """
    g0, g1 = grid
    if pos_embed.shape[0] != 1 + g0 * g1:
        raise ValueError(f"positional embedding has {pos_embed.shape[0]} rows; expected 1 + {g0}x{g1}")
    if tuple(size) == (g0, g1):
        return pos_embed
    cls_row, grid_rows = pos_embed[:1], pos_embed[1:]
    grid_rows = grid_rows.reshape(1, g0, g1, -1).permute(0, 3, 1, 2).float()
    grid_rows = F.interpolate(grid_rows, size=tuple(size), mode="bicubic", align_corners=False)
    grid_rows = grid_rows.permute(0, 2, 3, 1).reshape(size[0] * size[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_row, grid_rows])


def maskclip_value_path(block: nn.Module, x: Tensor) -> Tensor:
    """The last block of CLIP's image encoder without query-key attention (MaskCLIP).

    For an open_clip ``ResidualAttentionBlock`` with weights ``W_v, b_v`` (the value third of
    ``attn.in_proj_*``) and ``W_o, b_o`` (``attn.out_proj``)::

        v = W_v · ln_1(x) + b_v
        y = x + ls_1(W_o · v + b_o)                 # attention replaced by the value path
        y = y + ls_2(mlp(ln_2(y)))                  # the MLP branch kept

    Choice: this follows MaskCLIP's released code (``TransformerEncoderLayer.forward`` with
    ``skip_last_attn``: ``v += x; v = ffn(norm2(v), identity=v)``), which keeps the residual and
    the MLP; the paper's Fig. 2 describes only the value embedding and the last linear layer.
    Every token (class token included) takes the same path; they no longer interact.

    Args:
        block: the last ``ResidualAttentionBlock`` of ``visual.transformer.resblocks``.
        x: (B, L, C) tokens entering the block (batch first).
    Returns:
        (B, L, C) tokens leaving it.
    """
    attn: nn.MultiheadAttention = block.attn
    width = x.shape[-1]
    w_v = attn.in_proj_weight[2 * width :]
    b_v = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(x), w_v, b_v)
    y = x + block.ls_1(attn.out_proj(v))
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def maskclip_features(visual: nn.Module, images: Tensor) -> Tensor:
    """Dense CLIP features ``F = |f_proj(F)|_2`` (FMWISS Eq. 1) with MaskCLIP's last block.

    Patch embedding, class token and positional embedding (interpolated to the input's patch
    grid), ``ln_pre``, all blocks but the last, :func:`maskclip_value_path`, ``ln_post``, then the
    visual projection ``proj`` (f_proj) and L2 normalisation along channels.

    Args:
        visual: an open_clip ``VisionTransformer`` (``model.visual``).
        images: (B, 3, H, W) float, normalised with the model's mean/std; H and W multiples of
            the patch size.
    Returns:
        (B, h, w, d) float, unit L2 norm along d (h = H / patch, w = W / patch; d = the joint
        embedding size, 512 for ViT-B-16).
    Raises:
        ValueError: H or W not a multiple of the patch size.
    """
    batch, _, height, width = images.shape
    patch = visual.patch_size
    if height % patch[0] or width % patch[1]:
        raise ValueError(f"maskclip_features: input {height}x{width} is not a multiple of the patch {patch}")
    grid = (height // patch[0], width // patch[1])
    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, C, h, w)
    x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
    cls = visual.class_embedding.to(x.dtype).expand(batch, 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, visual.grid_size, grid).to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    if not visual.transformer.batch_first:
        x = x.transpose(0, 1)
        for block in blocks[:-1]:
            x = block(x)
        x = x.transpose(0, 1)
    else:
        for block in blocks[:-1]:
            x = block(x)
    x = maskclip_value_path(blocks[-1], x)
    x = visual.ln_post(x[:, 1:])
    x = x @ visual.proj.to(x.dtype)
    return F.normalize(x.float(), dim=-1).reshape(batch, grid[0], grid[1], -1)


def voc_indices(classes: Sequence[int], table: str = "voc") -> list[int]:
    """The VOC class indices (keys of :data:`CLIP_CLASS_NAMES`) of ``classes`` of task table
    ``table``: unchanged for ``voc``; for ``coco80`` (COCO-to-VOC, the paper's numbering) class
    61..80 -> its VOC index (:mod:`pipeline.data.coco_classes`), any other class -> 0 (no name).

    Raises:
        ValueError: another table.
    """
    if table == "voc":
        return [int(c) for c in classes]
    if table != "coco80":
        raise ValueError(f"task table {table!r}: CLIP class names exist for voc and coco80 (its VOC classes)")
    return [COCO_TO_VOC.get(PAPER_ORDER[int(c) - 1], 0) if 1 <= int(c) <= len(PAPER_ORDER) else 0 for c in classes]


@torch.no_grad()
def text_embeddings(
    model: nn.Module,
    tokenizer,
    classes: Sequence[int],
    templates: str = "openai",
    device: torch.device | str = "cpu",
    table: str = "voc",
) -> Tensor:
    """Prompt-ensembled text embeddings ``T = |f_T(prompt(C_t))|_2`` (FMWISS Eq. 2).

    Each class name (:data:`CLIP_CLASS_NAMES`) is put in every template, encoded and normalised;
    the mean over templates is normalised again (CLIP's zero-shot ensemble, via open_clip's
    ``build_zero_shot_classifier``).

    Args:
        model: open_clip model; tokenizer: its tokenizer.
        classes: K VOC class indices (1..20), or classes of ``table`` (:func:`voc_indices`).
        templates: template set name (:func:`prompt_templates`).
        device: where to compute.
        table: the task table of ``classes`` (``voc``; ``coco80``: COCO-to-VOC's VOC classes 61..80).
    Returns:
        (K, d) float32, unit L2 norm per row.
    Raises:
        ValueError: a class index without a name.
    """
    from open_clip import build_zero_shot_classifier

    voc = voc_indices(classes, table)
    unknown = [c for c, v in zip(classes, voc) if v not in CLIP_CLASS_NAMES or v == 0]
    if unknown:
        raise ValueError(
            f"text_embeddings: no CLIP class name for class index {unknown[0]} (table {table}); expected "
            "1..20 (voc) or 61..80 (coco80)"
        )
    if not classes:
        return torch.zeros((0, model.visual.output_dim), device=device)
    names = [CLIP_CLASS_NAMES[v] for v in voc]
    weights = build_zero_shot_classifier(
        model, tokenizer, names, prompt_templates(templates), num_classes_per_batch=10, device=device
    )
    return weights.T.float().contiguous()


def pixel_text_scores(features: Tensor, text: Tensor) -> Tensor:
    """``M_init = F · T^T`` (FMWISS Eq. 3): cosine score of every pixel with every class.

    Args:
        features: (B, h, w, d) unit-norm dense features (Eq. 1).
        text: (K, d) unit-norm text embeddings (Eq. 2).
    Returns:
        (B, K, h, w) float32 in [-1, 1].
    """
    with torch.autocast(device_type=features.device.type, enabled=False):  # float32 under AMP too
        return torch.einsum("bhwd,kd->bkhw", features.float(), text.float().to(features.device))


def dense_clip_scores(model: nn.Module, images: Tensor, text_embeddings: Tensor) -> Tensor:
    """Initial mask scores of a batch: Eq. 1 (:func:`maskclip_features`) then Eq. 3.

    Args:
        model: open_clip model (its ``visual`` ViT is used).
        images: (B, 3, H, W) float normalised with :func:`clip_mean_std`; H, W multiples of the
            patch size.
        text_embeddings: (K, d) unit-norm (:func:`text_embeddings`).
    Returns:
        (B, K, H / patch, W / patch) float32 cosine scores in [-1, 1].
    """
    return pixel_text_scores(maskclip_features(model.visual, images), text_embeddings)


__all__ = [
    "CLIP_CLASS_NAMES",
    "MASKCLIP_VOC_CLASSES",
    "clip_mean_std",
    "dense_clip_scores",
    "interpolate_pos_embed",
    "is_torchscript_archive",
    "load_clip",
    "maskclip_features",
    "maskclip_value_path",
    "pixel_text_scores",
    "prompt_templates",
    "resolve_quick_gelu",
    "text_embeddings",
    "voc_indices",
]
