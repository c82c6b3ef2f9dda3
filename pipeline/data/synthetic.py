"""Stage ``make-demo-data``: a generated demo dataset in the VOC layout, easy to learn from scratch.

Each of the 20 object classes is a unique (colour, texture, shape) combination, and any two
classes differ in at least two of the three cues: every class has its own saturated colour
(10 hues x 2 brightness levels), and no two classes share both texture and shape. Objects
(1-3 per image, 25-45 % of the image side) are painted on a cluttered low-saturation background
(noise, smooth blobs, thin lines), later objects over earlier ones. Masks hold the class index,
0 for background and a 1-pixel void (255) band on the object side of every boundary, as VOC.

Instance maps (``SegmentationObject/<id>.png``, mode P, VOC palette, the layout of VOC 2012): 0
background, 1..N the painted objects in painting order, 255 exactly where the class map is void,
so the instances refine the class map (each id in one class, a class's instances cover its
pixels). Drawing them takes no random number: the class maps and images of ``demo_*`` are
byte-identical to those of the generator before instance maps existed. Those images hold
objects of distinct classes only, so a second set, ``demo_inst_*`` (drawn from ``(seed, j, 1)``),
holds 2-4 instances of one class, some touching (one connected region of the class map, with no
void between them: only the instance map separates them) and some apart, and sometimes one
object of another class; they are smaller (``INSTANCE_OBJECT_SIZE``) to fit.

Layout written under the root: ``JPEGImages/<id>.jpg`` (quality 90), ``SegmentationClassAug/
<id>.png`` (mode P, VOC palette), ``SegmentationObject/<id>.png``,
``ImageSets/Segmentation/{train_aug,val}.txt`` (``demo_*`` only, unchanged),
``ImageSets/Segmentation/{train_inst,val_inst}.txt`` (the same ids followed by the ``demo_inst_*``
ones of the split), ``classes.json``. Ids are ``demo_000000``...; train ids come first, then val
ids. Image ``i`` is drawn from its own ``numpy.random.Generator`` seeded with ``(seed, i)``, so
the output is byte-identical for a seed whatever the number of workers.
"""

from __future__ import annotations

import colorsys
import functools
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pipeline.data.classes import NUM_OBJECT_CLASSES, VOID, voc_palette
from pipeline.io import atomic_path, write_json, write_text

HUES = ("red", "orange", "yellow", "lime", "green", "cyan", "azure", "blue", "violet", "magenta")
LEVELS = ("", "dark-")  # colour-name prefix of the two brightness levels
LEVEL_VALUE = (1.0, 0.6)  # HSV value of each level (saturation 1)
TEXTURES = ("solid", "hstriped", "vstriped", "checkered", "dotted")
SHAPES = ("disc", "square", "triangle", "cross", "ring")
MAX_ROTATION_DEG = {"disc": 0.0, "square": 15.0, "triangle": 20.0, "cross": 15.0, "ring": 0.0}
TEXTURE_PERIOD = 8  # pixels; half-period 4 survives JPEG q90 and a 2x downscale
TEXTURE_DARKEN = 0.75  # "off" parts of a texture are the class colour times this
OBJECT_SIZE = (0.25, 0.45)  # object extent as a fraction of the image side
MIN_VISIBLE = 0.5  # a new object may hide at most half of an earlier one
JPEG_QUALITY = 90
INSTANCE_OBJECT_SIZE = (0.2, 0.32)  # demo_inst_* objects: 2-4 of them share the image
INSTANCE_COUNT = (2, 4)  # instances of the repeated class in a demo_inst_* image
INSTANCE_GAP = 3  # px of background at least between two instances placed "apart"


def class_table() -> list[dict]:
    """The 20 object classes: index 1..20, descriptive name and the three cues.

    Class ``k + 1`` has hue ``k // 2`` and brightness level ``k % 2`` (so the colour is unique),
    texture ``k % 5`` and shape ``(k % 5 + k // 5) % 5`` (so the (texture, shape) pair is unique,
    and the two classes sharing a hue differ in texture and shape as well).

    Returns:
        list of ``{"index", "name", "colour", "rgb" (0..255 ints), "texture", "shape"}``.
    """
    table = []
    for k in range(NUM_OBJECT_CLASSES):
        hue, level = divmod(k, 2)
        colour = LEVELS[level] + HUES[hue]
        rgb = colorsys.hsv_to_rgb(hue / len(HUES), 1.0, LEVEL_VALUE[level])
        texture = TEXTURES[k % 5]
        shape = SHAPES[(k % 5 + k // 5) % 5]
        table.append(
            {
                "index": k + 1,
                "name": f"{colour}-{texture}-{shape}",
                "colour": colour,
                "rgb": [round(255 * x) for x in rgb],
                "texture": texture,
                "shape": shape,
            }
        )
    return table


CLASSES = class_table()


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float RGB in [0, 1]: low-saturation grey/brown/green clutter.

    Saturation stays below ~0.3 and every channel in [0.2, 0.8], far from every class colour.
    """
    kind = rng.integers(3)
    hue = (rng.uniform(0, 1), rng.uniform(20, 40) / 360, rng.uniform(80, 140) / 360)[kind]
    sat = (rng.uniform(0, 0.06), rng.uniform(0.12, 0.25), rng.uniform(0.1, 0.22))[kind]
    base = _hsv(hue, sat, rng.uniform(0.4, 0.65))
    cells = int(rng.integers(3, 7))
    zoom = size / cells
    blobs = ndimage.zoom(rng.normal(0, 0.12, (cells, cells)), zoom, order=3, mode="nearest")
    tint = ndimage.zoom(rng.normal(0, 0.03, (cells, cells, 3)), (zoom, zoom, 1), order=1, mode="nearest")
    image = base * (1 + blobs[..., None]) + tint + rng.normal(0, 0.025, (size, size, 3))
    lines = Image.new("L", (size, size))
    draw = ImageDraw.Draw(lines)
    for shade in range(1, int(rng.integers(2, 6)) + 1):
        end_points = [tuple(int(x) for x in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(end_points, fill=shade, width=1)
    lines = np.asarray(lines)
    for shade in range(1, int(lines.max()) + 1):
        colour = _hsv(hue + rng.uniform(-0.05, 0.05), sat * rng.uniform(0.5, 1.2), rng.uniform(0.3, 0.8))
        image[lines == shade] = colour
    return np.clip(image, 0.2, 0.8)


def _shape_mask(
    shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float, angle: float
) -> np.ndarray:
    """(H, W) bool mask of ``shape`` centred at (cy, cx), circumradius ``radius`` px, rotated."""
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radius
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.4**2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "cross":
        return ((np.abs(u) <= 0.35) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.35) & (np.abs(u) <= 1.0))
    if shape == "triangle":  # equilateral, circumradius 1, pointing up (edge normals at 90/210/330 deg)
        return (v <= 0.5) & (-0.866 * u - 0.5 * v <= 0.5) & (0.866 * u - 0.5 * v <= 0.5)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _texture(texture: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool: True where the texture darkens the colour (random phase, image axes)."""
    oy, ox = rng.integers(0, TEXTURE_PERIOD, 2)
    half = TEXTURE_PERIOD // 2
    y, x = yy.astype(np.int64) + oy, xx.astype(np.int64) + ox
    if texture == "solid":
        return np.zeros(yy.shape, dtype=bool)
    if texture == "hstriped":
        return (y // half) % 2 == 1
    if texture == "vstriped":
        return (x // half) % 2 == 1
    if texture == "checkered":
        return (y // half + x // half) % 2 == 1
    if texture == "dotted":
        dy, dx = y % TEXTURE_PERIOD - half, x % TEXTURE_PERIOD - half
        return dy * dy + dx * dx <= 4
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")


def _paint(
    rng: np.random.Generator,
    image: np.ndarray,
    label: np.ndarray,
    c: int,
    region: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
) -> None:
    """Paint one object of class ``c`` on ``region`` (colour jitter and texture from ``rng``)."""
    spec = CLASSES[c - 1]
    hue, level = divmod(c - 1, 2)
    colour = _hsv(
        hue / len(HUES) + rng.uniform(-0.012, 0.012), rng.uniform(0.9, 1.0), LEVEL_VALUE[level] * rng.uniform(0.95, 1.0)
    )
    shade = np.where(_texture(spec["texture"], yy, xx, rng), TEXTURE_DARKEN, 1.0)
    image[region] = colour * shade[region][:, None]
    label[region] = c


def _finish(
    rng: np.random.Generator, image: np.ndarray, label: np.ndarray, instances: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image noise, the void band, and the instance map made void where the class map is."""
    image = np.clip(image + rng.normal(0, 0.015, image.shape), 0, 1)
    mask = add_void_band(label)
    return np.round(image * 255).astype(np.uint8), mask, instance_map_for(mask, instances)


def instance_map_for(mask: np.ndarray, painted: np.ndarray) -> np.ndarray:
    """The instance map of a demo image: ``painted`` ids (1..N in painting order, 0 background)
    made void (255) wherever the class map ``mask`` is, then renumbered 1..M over the ids that
    keep a pixel (none is lost with the placement rules; the renumbering only guards it)."""
    out = np.where(mask == VOID, VOID, painted).astype(np.uint8)
    ids = np.unique(out[(out != 0) & (out != VOID)])
    lut = np.arange(256, dtype=np.uint8)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint8)
    return lut[out]


def make_sample_with_instances(seed: int, index: int, size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw demo image ``index`` from the generator seeded with ``(seed, index)``, with its instances.

    Returns:
        image (size, size, 3) uint8 RGB, mask (size, size) uint8 with values in {0, 1..20, 255}
        and instance map (size, size) uint8; 1 to 3 objects of distinct classes, each at least
        half visible, one instance each.
    """
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    painted = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    first = int(rng.integers(1, NUM_OBJECT_CLASSES + 1))
    others = rng.permutation([c for c in range(1, NUM_OBJECT_CLASSES + 1) if c != first])
    classes = [first, *others[: int(rng.integers(0, 3))].tolist()]
    visible: list[tuple[np.ndarray, int]] = []  # (visible mask, full area) of painted objects
    for c in classes:
        spec = CLASSES[c - 1]
        for _ in range(30):
            radius = rng.uniform(*OBJECT_SIZE) * size / 2
            cy, cx = rng.uniform(radius, size - radius, 2)
            angle = np.deg2rad(rng.uniform(-1, 1) * MAX_ROTATION_DEG[spec["shape"]])
            region = _shape_mask(spec["shape"], yy, xx, cy, cx, radius, angle)
            if all((vis & ~region).sum() >= MIN_VISIBLE * area for vis, area in visible):
                break
        else:
            continue  # no placement leaves the earlier objects visible enough: drop this object
        _paint(rng, image, label, c, region, yy, xx)
        painted[region] = len(visible) + 1
        visible = [(vis & ~region, area) for vis, area in visible] + [(region, int(region.sum()))]
    return _finish(rng, image, label, painted)


def make_sample(seed: int, index: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Demo image ``index`` and its class map (:func:`make_sample_with_instances` without the instances)."""
    image, mask, _ = make_sample_with_instances(seed, index, size)
    return image, mask


def make_instance_sample(seed: int, index: int, size: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``demo_inst`` image ``index`` (generator seeded with ``(seed, index, 1)``).

    2-4 instances of one class (``INSTANCE_COUNT``); each one after the first is placed either
    *touching* an earlier instance of the class (overlapping it, painted over it, every earlier
    object keeping at least ``MIN_VISIBLE`` of its area) or *apart* from every earlier object (at
    least ``INSTANCE_GAP`` px of background between them); half of the images first get one
    object of another class. An instance that finds no placement in 30 draws is dropped.

    Returns:
        image, class map and instance map as :func:`make_sample_with_instances`.
    """
    rng = np.random.default_rng([seed, index, 1])
    image = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    painted = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    c = int(rng.integers(1, NUM_OBJECT_CLASSES + 1))
    plan: list[tuple[int, str]] = []  # (class, relation to the earlier objects)
    if rng.random() < 0.5:
        other = int(rng.choice([k for k in range(1, NUM_OBJECT_CLASSES + 1) if k != c]))
        plan.append((other, "free"))
    n = int(rng.integers(INSTANCE_COUNT[0], INSTANCE_COUNT[1] + 1))
    plan += [(c, "free" if i == 0 else ("touch" if rng.random() < 0.5 else "apart")) for i in range(n)]
    gap = ndimage.generate_binary_structure(2, 1)
    objects: list[tuple[int, np.ndarray, int]] = []  # (class, visible mask, full area)
    for k, relation in plan:
        spec = CLASSES[k - 1]
        same = [vis for cls, vis, _ in objects if cls == k]
        partner = same[int(rng.integers(len(same)))] if relation == "touch" and same else None
        for _ in range(30):
            radius = rng.uniform(*INSTANCE_OBJECT_SIZE) * size / 2
            if partner is not None:  # centre at a point of the partner, pushed out along a random direction
                ys, xs = np.nonzero(partner)
                j = int(rng.integers(ys.size))
                theta = rng.uniform(0, 2 * np.pi)
                reach = rng.uniform(0.6, 1.0) * radius
                cy = float(np.clip(ys[j] + 0.5 + reach * np.sin(theta), radius, size - radius))
                cx = float(np.clip(xs[j] + 0.5 + reach * np.cos(theta), radius, size - radius))
            else:
                cy, cx = rng.uniform(radius, size - radius, 2)
            angle = np.deg2rad(rng.uniform(-1, 1) * MAX_ROTATION_DEG[spec["shape"]])
            region = _shape_mask(spec["shape"], yy, xx, cy, cx, radius, angle)
            if not all((vis & ~region).sum() >= MIN_VISIBLE * area for _, vis, area in objects):
                continue
            if relation == "apart":
                halo = ndimage.binary_dilation(region, gap, iterations=INSTANCE_GAP)
                if any((halo & vis).any() for _, vis, _ in objects):
                    continue
            if partner is not None and not (region & partner).any():
                continue
            break
        else:
            continue  # no placement satisfies the relation: drop this instance
        _paint(rng, image, label, k, region, yy, xx)
        painted[region] = len(objects) + 1
        objects = [(cls, vis & ~region, area) for cls, vis, area in objects] + [(k, region, int(region.sum()))]
    return _finish(rng, image, label, painted)


def add_void_band(label: np.ndarray) -> np.ndarray:
    """Mark object boundaries void, as VOC does (a morphological internal gradient, scipy.ndimage).

    A pixel becomes 255 when a 4-neighbour has a lower label: a 1-pixel band on the inside of
    every object edge, on the side of the higher class where two objects touch.

    Args:
        label: (H, W) uint8 label map, values 0..20.
    Returns:
        (H, W) uint8 copy with the band set to 255; image borders are not boundaries.
    """
    cross = ndimage.generate_binary_structure(2, 1)
    out = label.copy()
    out[label != ndimage.grey_erosion(label, footprint=cross, mode="nearest")] = VOID
    return out


def demo_id(index: int) -> str:
    """Id of demo image ``index``: ``demo_000123``."""
    return f"demo_{index:06d}"


def instance_demo_id(index: int) -> str:
    """Id of multi-instance demo image ``index``: ``demo_inst_000123``."""
    return f"demo_inst_{index:06d}"


@functools.cache
def _palette() -> bytes:
    return voc_palette().tobytes()  # computed once per process: the bit loop costs ~1 ms a call


def _save_png(labels: np.ndarray, path: Path) -> None:
    png = Image.fromarray(labels)
    png.putpalette(_palette())
    with atomic_path(path) as tmp:
        png.save(tmp)


def _write_sample(index: int, root: Path, size: int, seed: int) -> None:
    """Write image ``index``: ``demo_*`` for ``index >= 0``, ``demo_inst_*`` number ``-index - 1`` below."""
    if index >= 0:
        image, mask, instances = make_sample_with_instances(seed, index, size)
        name = demo_id(index)
    else:
        image, mask, instances = make_instance_sample(seed, -index - 1, size)
        name = instance_demo_id(-index - 1)
    with atomic_path(root / "JPEGImages" / f"{name}.jpg") as tmp:
        Image.fromarray(image).save(tmp, quality=JPEG_QUALITY, subsampling=0)
    _save_png(mask, root / "SegmentationClassAug" / f"{name}.png")
    _save_png(instances, root / "SegmentationObject" / f"{name}.png")


def generate(
    root: str | os.PathLike,
    n_train: int = 600,
    n_val: int = 120,
    size: int = 96,
    seed: int = 0,
    workers: int = 0,
    n_train_inst: int | None = None,
    n_val_inst: int | None = None,
) -> None:
    """Write the demo dataset under ``root`` (layout in the module docstring).

    Args:
        n_train, n_val: number of ``demo_*`` images in ``train_aug.txt`` and ``val.txt``.
        size: image side in pixels (square images).
        seed: same seed, same bytes (independent of ``workers``).
        workers: 0 generates in this process, >0 in a ``multiprocessing`` pool.
        n_train_inst, n_val_inst: number of multi-instance ``demo_inst_*`` images added to
            ``train_inst.txt`` / ``val_inst.txt`` (default a quarter of ``n_train`` / ``n_val``,
            at least 1); the first ``n_train_inst`` are train, the next ``n_val_inst`` val.
    Raises:
        ValueError: non-positive counts or a size below 32 px.
    """
    n_train_inst = max(1, n_train // 4) if n_train_inst is None else n_train_inst
    n_val_inst = max(1, n_val // 4) if n_val_inst is None else n_val_inst
    if n_train < 1 or n_val < 1 or size < 32 or n_train_inst < 0 or n_val_inst < 0:
        raise ValueError(
            f"need n_train >= 1, n_val >= 1, size >= 32, n_train_inst >= 0, n_val_inst >= 0; got {n_train}, "
            f"{n_val}, {size}, {n_train_inst}, {n_val_inst}"
        )
    root = Path(root)
    write = functools.partial(_write_sample, root=root, size=size, seed=seed)
    n_inst = n_train_inst + n_val_inst
    indices = [*range(n_train + n_val), *(-j - 1 for j in range(n_inst))]  # < 0: demo_inst_* images
    if workers > 0:
        with multiprocessing.Pool(workers) as pool:
            for _ in pool.imap_unordered(write, indices, chunksize=16):
                pass
    else:
        for i in indices:
            write(i)
    write_json(root / "classes.json", CLASSES)
    lists = root / "ImageSets" / "Segmentation"  # written last: the lists mark a finished dataset
    train = "".join(f"{demo_id(i)}\n" for i in range(n_train))
    val = "".join(f"{demo_id(i)}\n" for i in range(n_train, n_train + n_val))
    write_text(lists / "train_inst.txt", train + "".join(f"{instance_demo_id(j)}\n" for j in range(n_train_inst)))
    write_text(lists / "val_inst.txt", val + "".join(f"{instance_demo_id(j)}\n" for j in range(n_train_inst, n_inst)))
    write_text(lists / "train_aug.txt", train)
    write_text(lists / "val.txt", val)
