"""Numeric precision of a training run: which autocast dtype, measured rather than guessed.

On CUDA, bfloat16 autocast where the GPU supports it (no gradient scaler needed), else float16
with a scaler. On a CPU, bfloat16 autocast helps only where the CPU has fast bf16 kernels: on an
AMD EPYC with avx512_bf16 it made the demo model's step 1.86× faster, on an Intel Xeon that also
reports avx512_bf16 (no AMX) 1.5-1.7× slower. So ``auto`` on a CPU times one small conv step in
float32 and under bf16 autocast (:func:`probe_cpu_bfloat16`, ~2 s) and keeps float32 unless bf16
is clearly faster. The verdict is cached per machine (CPU model, torch version, threads) so every
job of a DAG on that host makes the same choice and a resumed run keeps its precision.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.io import write_json

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bfloat16", "float16", "float32")
#: bf16 must beat float32 by this factor on the probe to be chosen on a CPU.
CPU_BF16_MIN_SPEEDUP = 1.15
#: Where the CPU verdict is cached (override with WILSS_CACHE_DIR).
CACHE_DIR = Path(os.environ.get("WILSS_CACHE_DIR", Path.home() / ".cache" / "wilss-pipeline"))


@dataclass(frozen=True)
class Precision:
    """The resolved precision of a run.

    Attributes:
        dtype: the autocast dtype, or None for plain float32.
        scaler: whether a gradient scaler is needed (float16 only).
        channels_last: NHWC memory format (CUDA, and CPU under bf16: the oneDNN kernels prefer it).
        reason: one line for the log and the run's metadata.
    """

    dtype: torch.dtype | None
    scaler: bool
    channels_last: bool
    reason: str

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_cpu_bfloat16(repeats: int = 3) -> dict[str, float]:
    """Time one forward+backward of a small conv stack (batch 8, 64 channels, 48×48) in float32 and
    under CPU bf16 autocast, with the current torch thread count.

    Returns:
        ``{"float32_s": ..., "bfloat16_s": ..., "speedup": float32_s / bfloat16_s}`` (median of
        ``repeats`` after one warm-up each); ``speedup`` 0 if bf16 autocast fails on this CPU.
    """
    torch.manual_seed(0)
    net = nn.Sequential(
        *[m for _ in range(4) for m in (nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())]
    )
    x = torch.randn(8, 64, 48, 48)

    def step(bf16: bool) -> float:
        model, inp = (
            (net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last))
            if bf16
            else (net, x)
        )
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(inp).float().square().mean()
        loss.backward()
        return time.perf_counter() - start

    def median(bf16: bool) -> float:
        step(bf16)
        return sorted(step(bf16) for _ in range(repeats))[repeats // 2]

    fp32 = median(False)
    try:
        bf16 = median(True)
    except RuntimeError:
        return {"float32_s": fp32, "bfloat16_s": float("inf"), "speedup": 0.0}
    return {"float32_s": fp32, "bfloat16_s": bf16, "speedup": fp32 / bf16}


def cpu_bfloat16_verdict(threads: int | None = None) -> dict:
    """Whether bf16 autocast is worth it on this CPU: the cached verdict, or a new probe.

    ``WILSS_CPU_BF16=1`` / ``0`` forces the answer (no probe). Returns the record
    ``{"use_bf16", "cpu", "torch", "threads", ...timings}``.
    """
    forced = os.environ.get("WILSS_CPU_BF16")
    if forced in ("0", "1"):
        return {"use_bf16": forced == "1", "forced": True}
    threads = threads or torch.get_num_threads()
    key = f"{_cpu_model()}|torch {torch.__version__}|{threads} threads"
    path = CACHE_DIR / "cpu_bf16.json"
    with _locked(CACHE_DIR / "cpu_bf16.lock"):  # jobs started together probe once and agree
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return cache[key]
        timing = probe_cpu_bfloat16()
        record = {
            "use_bf16": timing["speedup"] >= CPU_BF16_MIN_SPEEDUP,
            "cpu": _cpu_model(),
            "torch": torch.__version__,
            "threads": threads,
            **timing,
        }
        try:
            write_json(path, {**cache, key: record})
        except OSError as error:  # a read-only home: decide anew next time
            log.warning("could not cache the CPU bf16 probe in %s: %s", path, error)
    log.info(
        "CPU bf16 probe on %s (%d threads): float32 %.3f s, bf16 %.3f s, speedup %.2f -> %s",
        record["cpu"],
        threads,
        timing["float32_s"],
        timing["bfloat16_s"],
        timing["speedup"],
        "bfloat16" if record["use_bf16"] else "float32",
    )
    return record


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (created), or none if the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """The precision ``name`` (:data:`PRECISIONS`) on ``device``.

    Raises:
        ValueError: an unknown name, or float16/bfloat16 where the device cannot run it.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision={name!r}: expected one of {PRECISIONS}")
    cuda = device.type == "cuda"
    if name == "float32":
        return Precision(None, False, cuda, "float32 (configured)")
    if cuda:
        bf16_ok = torch.cuda.is_bf16_supported()
        if name == "bfloat16" and not bf16_ok:
            raise ValueError(f"precision=bfloat16: {torch.cuda.get_device_name(device)} does not support bf16")
        if name == "float16" or (name == "auto" and not bf16_ok):
            return Precision(torch.float16, True, True, f"float16 autocast + grad scaler ({name})")
        return Precision(torch.bfloat16, False, True, f"bfloat16 autocast ({name})")
    if name == "float16":
        raise ValueError("precision=float16 is for CUDA; on a CPU use bfloat16, float32 or auto")
    if name == "bfloat16":
        return Precision(torch.bfloat16, False, True, "bfloat16 autocast on the CPU (configured)")
    verdict = cpu_bfloat16_verdict()
    if verdict["use_bf16"]:
        return Precision(torch.bfloat16, False, True, f"bfloat16 autocast on the CPU (auto: {_describe(verdict)})")
    return Precision(None, False, False, f"float32 on the CPU (auto: {_describe(verdict)})")


def _describe(verdict: dict) -> str:
    if verdict.get("forced"):
        return "forced by WILSS_CPU_BF16"
    return f"probe speedup {verdict['speedup']:.2f}x, threshold {CPU_BF16_MIN_SPEEDUP}x"


__all__ = ["PRECISIONS", "Precision", "cpu_bfloat16_verdict", "probe_cpu_bfloat16", "resolve_precision"]
