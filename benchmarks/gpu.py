"""Throughput of the pipeline's heavy parts on one accelerator, and the wall time they project for
the papers' matrices.

Measures, with random weights and synthetic tensors (``pretrained: none``: the same code path and
FLOPs as real weights), in one process:

1. **train**: iterations of the shared loop (:class:`pipeline.train.loop.Trainer`, pixel CE, SGD)
   on DeepLabV3-ResNet-101 at output stride 16, 512² crops, batch 24, in the loop's precision
   (bf16 autocast + channels_last on a bf16 GPU), without and with ``torch.compile``;
2. **evaluate**: forward passes at full VOC resolution (500×375), batch 1, as the evaluate stage;
3. **coseg**: the co-segmentation stage's models (CLIP ViT-B/16 with MaskCLIP's last block + iBOT
   ViT-L/16 seed attention, FMWISS Eq. 1-4) at 448 px, batch 8;

then projects the wall time of the full VOC 15-5 + 10-10 matrix (WILSON Tables 1-2: both
protocols, step 0 + 8 methods) and of COCO-to-VOC (WILSON Table 3) from the images each stage
processes (split sizes measured on the real VOC+SBD label maps; epochs from config.yaml).

``--cpu`` runs a reduced version (ResNet-18 at 64², ViT-S at 64 px, a few iterations) so the
benchmark's code is tested without an accelerator; its numbers are not a CPU benchmark.

Run: ``python benchmarks/gpu.py [--cpu] [--out benchmarks/results/gpu.json]``; on one GPU it takes
about 3-4 minutes (the compiled variant compiles first).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from pipeline.config import validated_section  # noqa: E402
from pipeline.foundation.compute import CosegModels  # noqa: E402
from pipeline.foundation.coseg import resolve_config  # noqa: E402
from pipeline.methods import build_method  # noqa: E402
from pipeline.models import build_segmenter  # noqa: E402
from pipeline.train.loop import LoopConfig, Trainer  # noqa: E402
from pipeline.train.precision import resolve_precision  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
#: Training images per step, measured on the real VOC+SBD label maps (README: splits at full scale).
VOC_STEPS = {
    ("15-5", "disjoint"): (8437, 2145),
    ("15-5", "overlap"): (9568, 2145),
    ("10-10", "disjoint"): (3706, 6876),
    ("10-10", "overlap"): (6139, 6876),
}
VOC_TRAIN, VOC_VAL = 10582, 1449
#: COCO-to-VOC (WILSON Sec. 4.1): step 0 on the COCO images without VOC pixels (the authors'
#: index), step 1 on VOC train_aug; evaluation on COCO val2017 and VOC val.
COCO_STEPS, COCO_VAL = (23274, 10582), 5000 + VOC_VAL
METHODS = ("ft", "joint", "mib", "wilson", "fmwiss", "cam", "vwe", "iscam")
CAM_METHODS = ("cam", "vwe", "iscam")

FULL = {
    "backbone": "resnet101",
    "crop": 512,
    "batch": 24,
    "iters": 12,
    "eval": (375, 500),
    "eval_images": 40,
    "clip": "ViT-B-16",
    "ssl": "vit_large_patch16_224",
    "coseg_size": 448,
    "coseg_images": 32,
}
REDUCED = {
    "backbone": "resnet18",
    "crop": 64,
    "batch": 2,
    "iters": 2,
    "eval": (48, 64),
    "eval_images": 2,
    "clip": "ViT-S-16",
    "ssl": "vit_small_patch16_224",
    "coseg_size": 64,
    "coseg_images": 2,
}


class Synthetic(Dataset):
    """``n`` random normalised crops with random labels (21 classes, void-free)."""

    def __init__(self, n: int, size: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.gt = torch.randint(0, 21, (n, size, size), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"id": str(i), "image": self.images[i], "gt": self.gt[i]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_throughput(spec: dict, device: torch.device, compile: bool, run_dir: Path) -> dict:
    """Images/s of the shared loop's training iterations (second epoch: after warm-up/compile)."""
    torch.manual_seed(0)
    model = build_segmenter({"backbone": spec["backbone"], "output_stride": 16, "pretrained": "none"}, [21])
    method = build_method("base", {"loss": "ce", "head_lr_mult": 10.0})
    n = spec["batch"] * spec["iters"]
    cfg = LoopConfig(
        epochs=2, batch_size=spec["batch"], lr=0.01, precision="auto", compile=compile, finite_check_every=spec["iters"]
    )
    trainer = Trainer(model, method, Synthetic(n, spec["crop"]), cfg, run_dir, device)
    trainer.train_epoch(0)  # warm-up: cudnn autotuning, compilation
    _sync(device)
    start = time.perf_counter()
    trainer.train_epoch(1)
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": n / seconds,
        "precision": trainer.precision.name,
        "compile": compile,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


@torch.no_grad()
def eval_throughput(spec: dict, device: torch.device) -> dict:
    """Images/s of evaluation forward passes at full resolution, batch 1."""
    model = build_segmenter({"backbone": spec["backbone"], "output_stride": 16, "pretrained": "none"}, [21])
    precision = resolve_precision("auto", device)
    model.to(device, memory_format=torch.channels_last if precision.channels_last else torch.contiguous_format).eval()
    image = torch.randn(1, 3, *spec["eval"], device=device)
    autocast = torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None)
    with autocast:
        model(image)
        _sync(device)
        start = time.perf_counter()
        for _ in range(spec["eval_images"]):
            model(image)["out"].argmax(1)
        _sync(device)
    return {"images_per_s": spec["eval_images"] / (time.perf_counter() - start)}


def coseg_throughput(spec: dict, device: torch.device) -> dict:
    """Images/s of the coseg stage's models (batched as the stage runs them)."""
    cfg = resolve_config(
        {
            "clip": {"model": spec["clip"], "pretrained": "none", "templates": "photo"},
            "ssl": {"model": spec["ssl"], "pretrained": "none", "checkpoint": None},
            "input_size": spec["coseg_size"],
        }
    )
    models = CosegModels(cfg, [16, 17, 18, 19, 20], device)
    n = spec["coseg_images"]
    images = torch.rand(n, 3, spec["coseg_size"], spec["coseg_size"])
    labels = [[16 + i % 5] for i in range(n)]
    batch = min(cfg["batch_size"], n)
    models(images[:batch], [str(i) for i in range(batch)], labels[:batch])  # warm-up
    _sync(device)
    start = time.perf_counter()
    for i in range(0, n, batch):
        models(images[i : i + batch], [str(j) for j in range(i, i + batch)], labels[i : i + batch])
    _sync(device)
    return {"images_per_s": n / (time.perf_counter() - start)}


def project(train_ips: float, eval_ips: float, coseg_ips: float) -> dict:
    """Projected hours of the VOC 15-5 + 10-10 matrix and of COCO-to-VOC (one seed), from the
    measured rates and config.yaml's epochs (train_base, train_step, train_cam)."""
    base_epochs = validated_section("train_base")["epochs"]
    step_epochs = validated_section("train_step")["epochs"]
    cam_epochs = {cam: validated_section("train_cam")[cam]["epochs"] for cam in CAM_METHODS}
    warmup = validated_section("methods")["fmwiss"]["warmup_epochs"]

    def matrix(steps: dict, val_images: int) -> float:
        images = 0.0
        for n0, n1 in steps.values():
            images += base_epochs * n0
            for method in METHODS:
                n = n0 + n1 if method == "joint" else n1
                images += (step_epochs + (warmup if method == "fmwiss" else 0)) * n
                images += cam_epochs[method] * n1 if method in CAM_METHODS else 0
        seconds = images / train_ips
        runs = len(steps) * (1 + len(METHODS))
        seconds += (
            runs * val_images / eval_ips + len(steps) * sum(n1 for _, n1 in steps.values()) / len(steps) / coseg_ips
        )
        return seconds / 3600

    return {
        "voc_15-5_10-10_hours": matrix(VOC_STEPS, VOC_VAL),
        "coco_to_voc_hours": matrix({("coco-voc", "overlap"): COCO_STEPS}, COCO_VAL),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="reduced sizes on the CPU (tests the code, not a benchmark)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variant")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu for the reduced check")
    device = torch.device("cpu" if args.cpu else "cuda")
    spec = REDUCED if args.cpu else FULL
    run_dir = args.out.parent / "gpu_bench_run"
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "mode": "reduced (cpu)" if args.cpu else "full",
        "sizes": spec,
    }
    result["train"] = train_throughput(spec, device, False, run_dir)
    if not args.skip_compile:
        result["train_compiled"] = train_throughput(spec, device, True, run_dir)
    result["evaluate"] = eval_throughput(spec, device)
    result["coseg"] = coseg_throughput(spec, device)
    best = max(result[k]["images_per_s"] for k in ("train", "train_compiled") if k in result)
    result["projection"] = project(best, result["evaluate"]["images_per_s"], result["coseg"]["images_per_s"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
