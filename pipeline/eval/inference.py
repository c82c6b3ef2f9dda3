"""Inference on any images, for the ``predict`` stage: image lists, whole-image or sliding-window
logits, precision, overlays and per-image class summaries.

Whole-image inference is :func:`pipeline.eval.evaluate.predict` itself, the function the
``evaluate`` stage runs: the images go through the same :class:`~pipeline.data.transforms.EvalTransform`
and the same batching, so a label map of ``predict`` equals the one ``evaluate`` writes for the
same model and image (bit for bit on the CPU; ``tests/test_predict.py``). Images are batched only
with images of the same size (:func:`size_groups`): a padded batch would change the predictions
(ASPP's image pooling averages over the padding).

Sliding-window inference (:class:`SlidingWindow`) is mmsegmentation's ``slide`` mode
(``EncoderDecoder.slide_inference``, mmseg 0.x and 1.x): windows of ``window`` = (h, w) placed
every ``stride`` = (h, w) pixels, the last row and column of windows shifted back inside the
image, and the logits of overlapping windows averaged per pixel. With a window at least the
image's size there is one window, the whole image, and the result is that of whole-image
inference exactly.
"""

from __future__ import annotations

import contextlib
import glob
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import Dataset

from pipeline.data.classes import BACKGROUND, class_name, colourise
from pipeline.data.coco_classes import PAPER_ORDER, coco_class_name
from pipeline.data.tasks import TASKS, seen_classes
from pipeline.data.transforms import EvalTransform
from pipeline.data.voc import DatasetError, load_image
from pipeline.eval.evaluate import predict

#: File name suffixes read as images (case-insensitive): what PIL decodes and the datasets hold.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: ``--precision`` choices; ``auto``: bf16 autocast on CUDA GPUs that support it (else fp16,
#: the evaluate stage's), float32 on the CPU (the evaluate stage's).
PRECISIONS: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")


# ----------------------------------------------------------------------------- images
def _suffix_ok(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _from_id_list(path: Path, image_root: str | Path | None) -> list[Path]:
    """Paths of the ids listed in ``path`` (one id per line, VOC's ``ImageSets`` format)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) and not a text list of image ids ({err})"
        ) from err
    ids = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise DatasetError(f"{path}: the id list is empty; expected one image id per line")
    if image_root is None:
        raise DatasetError(f"{path} is an id list: give --image-root, the folder holding <id>.jpg (or .png)")
    root = Path(image_root)
    if not root.is_dir():
        raise DatasetError(f"--image-root {root}: no such folder (the images of the ids in {path})")
    paths = []
    for image_id in ids:
        tried = [root / image_id] if Path(image_id).suffix else []
        tried += [root / f"{image_id}{suffix}" for suffix in (".jpg", ".jpeg", ".png")]
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            raise DatasetError(f"{path}: id {image_id!r}: no image found; tried {', '.join(map(str, tried))}")
        paths.append(found)
    return paths


def list_images(images: str | Path, image_root: str | Path | None = None) -> list[tuple[str, Path]]:
    """The images to segment, as ``(id, path)`` with id = the file's stem, in name order.

    Args:
        images: a folder (its files with an image suffix, :data:`IMAGE_SUFFIXES`; other files
            are skipped), one image file, a glob pattern (``"photos/*.jpg"``; every match must
            be an image file), or a text file of ids, one per line (VOC's ``ImageSets`` lists),
            read from ``image_root``.
        image_root: folder of ``<id>.jpg`` / ``.jpeg`` / ``.png`` for an id list.
    Returns:
        ``[(id, path)]``; only the file names are checked here (:func:`image_sizes` opens them).
    Raises:
        FileNotFoundError: ``images`` is no folder, file or matching pattern (names it).
        DatasetError (a ValueError): an empty folder or list, a glob match that is not an image
            file, an id without an image, an id list without ``image_root``, two images with one
            id; each message names the path.
    """
    text = str(images)
    path = Path(images)
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.is_file() and _suffix_ok(p))
        if not paths:
            raise DatasetError(f"{path}: no image files in this folder; expected {', '.join(IMAGE_SUFFIXES)} files")
    elif path.is_file():
        paths = [path] if _suffix_ok(path) else _from_id_list(path, image_root)
    elif glob.has_magic(text):
        paths = [Path(p) for p in sorted(glob.glob(text))]
        if not paths:
            raise FileNotFoundError(f"{text}: the pattern matches no file")
        bad = [p for p in paths if not (p.is_file() and _suffix_ok(p))]
        if bad:
            raise DatasetError(
                f"{bad[0]}: matched by {text} but not an image file; expected {', '.join(IMAGE_SUFFIXES)}"
            )
    else:
        raise FileNotFoundError(f"{path}: no such folder, image, id list or glob match")
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen:
            raise DatasetError(f"{seen[p.stem]} and {p}: two images with the id {p.stem!r}; outputs are named by id")
        seen[p.stem] = p
    return [(p.stem, p) for p in paths]


def image_sizes(items: Sequence[tuple[str, Path]]) -> list[tuple[int, int]]:
    """(height, width) of every image, read from its header (PIL opens lazily).

    Raises:
        DatasetError: a file PIL cannot identify as an image (names the file and the id).
    """
    sizes = []
    for image_id, path in items:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise DatasetError(
                f"{path} (id {image_id!r}): not an image PIL can read ({err}); expected a JPEG or PNG file"
            ) from err
        sizes.append((height, width))
    return sizes


def size_groups(sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Indices of equal-size images, groups in order of their first image (a batch never pads)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(i)
    return list(groups.values())


class ImageFiles(Dataset):
    """Images on disk as the evaluation samples of :func:`pipeline.eval.evaluate.predict`.

    ``__getitem__`` returns ``{"id", "image": float32 (3, H, W) normalised, "gt": int64 (H, W)
    zeros}`` through :class:`EvalTransform` (the evaluate stage's transform; ``gt`` is unused).
    Images are read by :func:`pipeline.data.voc.load_image` (RGB; grayscale, palette and CMYK
    converted; no EXIF rotation, as in evaluation); a corrupt file raises its DatasetError.
    """

    def __init__(self, items: Sequence[tuple[str, Path]]):
        self.items = list(items)
        self.transform = EvalTransform()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image_id, path = self.items[index]
        image = load_image(path, image_id)
        return self.transform({"id": image_id, "image": image, "mask": np.zeros(image.shape[:2], dtype=np.uint8)})


# ----------------------------------------------------------------------------- models
class SlidingWindow(nn.Module):
    """Sliding-window logits of a segmenter (mmsegmentation's ``slide_inference``).

    Args:
        model: returns ``{"out": (B, C, h, w) logits}`` at its input's resolution.
        window: (height, width) of a window in pixels; a window larger than the image is cut
            to the image (mmseg does the same).
        stride: (height, width) step between windows; at most the window (else pixels are
            skipped).
    ``forward(x)``: x (B, 3, H, W) → ``{"out": (B, C, H, W) float32}``, per pixel the mean of the
    logits of every window covering it. Windows: ``n_h = max(H - h + s_h - 1, 0) // s_h + 1``
    rows (and as many columns), row i at ``y1 = i * s_h``, moved to ``max(min(y1 + h, H) - h, 0)``.
    Raises:
        ValueError: a non-positive window or stride, or a stride larger than the window.
    """

    def __init__(self, model: nn.Module, window: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.model = model
        self.window = tuple(int(v) for v in window)
        self.stride = tuple(int(v) for v in stride)
        if len(self.window) != 2 or len(self.stride) != 2 or min(*self.window, *self.stride) < 1:
            raise ValueError(f"window {window} and stride {stride}: expected two positive sizes (height, width) each")
        if self.stride[0] > self.window[0] or self.stride[1] > self.window[1]:
            raise ValueError(f"stride {self.stride} larger than the window {self.window}: pixels would be skipped")

    @staticmethod
    def starts(size: int, window: int, stride: int) -> list[tuple[int, int]]:
        """(start, end) of the windows along one axis of ``size`` pixels (mmseg's grid)."""
        count = max(size - window + stride - 1, 0) // stride + 1
        spans = []
        for i in range(count):
            end = min(i * stride + window, size)
            spans.append((max(end - window, 0), end))
        return spans

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        height, width = x.shape[-2:]
        logits: Tensor | None = None
        count = torch.zeros((1, 1, height, width), dtype=torch.float32, device=x.device)
        for y1, y2 in self.starts(height, self.window[0], self.stride[0]):
            for x1, x2 in self.starts(width, self.window[1], self.stride[1]):
                out = self.model(x[:, :, y1:y2, x1:x2])["out"].float()
                if logits is None:
                    logits = torch.zeros(
                        (x.shape[0], out.shape[1], height, width), dtype=torch.float32, device=x.device
                    )
                logits[:, :, y1:y2, x1:x2] += out
                count[:, :, y1:y2, x1:x2] += 1
        return {"out": logits / count}


class Autocast(nn.Module):
    """Runs ``model`` under autocast to ``dtype`` on ``device_type`` (``None``: autocast off).

    An autocast region inside another replaces it, so this sets the precision whatever
    :func:`pipeline.eval.evaluate.predict` (fp16 autocast on CUDA, none on the CPU) sets around it.
    """

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype | None):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.dtype is None:
            region = torch.autocast(self.device_type, enabled=False)
        else:
            region = torch.autocast(self.device_type, dtype=self.dtype)
        with region:
            return self.model(x)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → ``bfloat16`` on a CUDA GPU that supports it, ``float16`` on one that does not
    (the evaluate stage's), ``float32`` on the CPU (the evaluate stage's); others as given.

    Raises:
        ValueError: a name not in :data:`PRECISIONS`, or ``float16`` on the CPU.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if name == "float16" and device.type == "cpu":
        raise ValueError("precision float16 is for CUDA; on the CPU use float32 or bfloat16")
    return name


def inference_model(
    model: nn.Module,
    device: torch.device,
    precision: str = "float32",
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> nn.Module:
    """``model`` wrapped for :func:`pipeline.eval.evaluate.predict`: a :class:`SlidingWindow`
    when ``window`` is given (``stride`` default: the window), then the precision (a resolved
    name, :func:`resolve_precision`). The evaluate stage's own precision (float32 on the CPU,
    float16 on CUDA) adds no wrapper, so whole-image inference is then the evaluate stage's."""
    if window is not None:
        model = SlidingWindow(model, window, stride if stride is not None else window)
    own = "float16" if device.type == "cuda" else "float32"
    if precision == own:
        return model
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}
    return Autocast(model, device.type, dtypes[precision])


def predict_images(
    model: nn.Module,
    items: Sequence[tuple[str, Path]],
    sizes: Sequence[tuple[int, int]],
    device: torch.device,
    batch_size: int = 1,
) -> Iterator[tuple[str, Path, np.ndarray]]:
    """Yield ``(id, path, labels)`` for every image, labels uint8 (H, W) channel indices of the
    model's label space (the argmax of ``model(image)["out"]``), by
    :func:`pipeline.eval.evaluate.predict` over batches of equal-size images (in the order of
    :func:`size_groups`)."""
    for group in size_groups(sizes):
        dataset = ImageFiles([items[i] for i in group])
        for (image_id, labels, _), i in zip(predict(model, dataset, device, batch_size, progress=False), group):
            yield image_id, items[i][1], labels


# ----------------------------------------------------------------------------- outputs
def model_classes(meta: dict, num_classes: int) -> list[tuple[int, int, str]]:
    """``(channel, class id, name)`` of every output of a model, from its ``meta``.

    Class ids are ``meta["seen_classes"]`` (written by train-base and train-step), else those
    seen by the model's task and step (:func:`pipeline.data.tasks.seen_classes`), else the
    channel indices. The task table is ``meta["task_table"]``, else the one holding the task
    (for a task of several tables, COCO-to-VOC, the one whose seen classes are the model's);
    names are COCO's for ``coco`` (category ids) and ``coco80`` (the paper's 1-80 numbering),
    VOC's otherwise (:func:`pipeline.data.classes.class_name`, the id itself beyond VOC).
    """
    task, step, ids = meta.get("task"), meta.get("step"), meta.get("seen_classes")
    tables = [name for name, tasks in TASKS.items() if task in tasks] or ["voc"]
    table = meta.get("task_table") if meta.get("task_table") in TASKS else tables[0]
    if "task_table" not in meta and len(tables) > 1 and isinstance(ids, list):  # coco-voc: coco ids or coco80
        for candidate in tables:
            with contextlib.suppress(ValueError, TypeError):
                if seen_classes(task, step, candidate) == ids:
                    table = candidate
                    break
    if not (isinstance(ids, list) and len(ids) == num_classes):
        with contextlib.suppress(ValueError, TypeError):
            ids = seen_classes(task, step, table)
    if not (isinstance(ids, list) and len(ids) == num_classes):
        ids = list(range(num_classes))
    names = {
        "coco": coco_class_name,  # COCO category ids
        "coco80": lambda c: coco_class_name(PAPER_ORDER[c - 1]) if 1 <= c <= len(PAPER_ORDER) else coco_class_name(c),
    }
    name = names.get(table, class_name)
    return [(channel, int(c), name(int(c))) for channel, c in enumerate(ids)]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with every non-background pixel blended with its class colour (VOC palette).

    Args:
        image: (H, W, 3) uint8 RGB; labels: (H, W) uint8 class (channel) indices;
        alpha: weight of the colour in [0, 1].
    Returns:
        (H, W, 3) uint8: ``(1 - alpha) * image + alpha * colour`` where labels != 0, the image
        elsewhere (class 0's colour is black).
    Raises:
        ValueError: shapes that do not match, or alpha outside [0, 1].
    """
    if image.shape[:2] != labels.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape}: expected (H, W, 3) and (H, W)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: expected a weight in [0, 1]")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colourise(labels).astype(np.float32)
    out = np.where((labels != BACKGROUND)[..., None], np.rint(blended), image.astype(np.float32))
    return out.astype(np.uint8)


def label_summary(labels: np.ndarray, classes: Sequence[tuple[int, int, str]]) -> list[dict]:
    """Classes present in one label map: ``[{"channel", "class_id", "name", "pixels",
    "area_fraction"}]`` in channel order, ``area_fraction`` = pixels / all pixels of the image."""
    counts = np.bincount(labels.reshape(-1), minlength=len(classes))
    total = max(int(labels.size), 1)
    return [
        {
            "channel": channel,
            "class_id": cid,
            "name": name,
            "pixels": int(counts[channel]),
            "area_fraction": float(counts[channel]) / total,
        }
        for channel, cid, name in classes
        if counts[channel] > 0
    ]


__all__ = [
    "IMAGE_SUFFIXES",
    "PRECISIONS",
    "Autocast",
    "ImageFiles",
    "SlidingWindow",
    "image_sizes",
    "inference_model",
    "label_summary",
    "list_images",
    "model_classes",
    "overlay",
    "predict_images",
    "resolve_precision",
    "size_groups",
]
