"""Data parallelism for the training loop: several processes (one per GPU, or CPU processes with
gloo), each on a slice of every global batch, gradients averaged before each step.

Launched by ``torchrun --nproc_per_node N python -m pipeline <stage> ...`` (the rules do this when
a job gets ``resources: gpu > 1``): torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``,
:func:`init_distributed` reads them. Without them everything runs in one process.

Why gradients are averaged here and not by ``DistributedDataParallel``'s reducer: the methods run
their extra modules (WILSON's localizer, FMWISS's teacher) outside the segmenter's forward and,
during a warm-up, leave the segmenter without gradient; DDP's reducer needs every parameter it
tracks to be used inside its forward in every iteration. One ``all_reduce`` per bucket of
gradients after ``backward`` computes the same average (PyTorch's DDP does exactly this, with the
reduction overlapped with backward).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 writes every file)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def init_distributed(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1), else run alone.

    Args:
        device: the configured device; with CUDA each process takes ``cuda:LOCAL_RANK``.
    Returns:
        (the world, this process's device). Backend: NCCL on CUDA, gloo on the CPU.
    Raises:
        RuntimeError: CUDA processes outnumber the visible GPUs.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE, device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={world.local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def barrier(world: World) -> None:
    """Wait for every process (no-op alone)."""
    if world.distributed:
        dist.barrier()


def average_gradients(parameters: Iterable[nn.Parameter], world: World, bucket_mb: float = 25.0) -> None:
    """Replace each gradient by its mean over the processes, in flat buckets of ~``bucket_mb`` MB.

    Parameters whose gradient is None are skipped (the same ones on every process: they run the
    same code).
    """
    if not world.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    limit, buckets, current, size = int(bucket_mb * 2**20), [], [], 0
    for grad in grads:
        nbytes = grad.numel() * grad.element_size()
        if current and (size + nbytes > limit or grad.dtype != current[0].dtype):
            buckets.append(current)
            current, size = [], 0
        current.append(grad)
        size += nbytes
    if current:
        buckets.append(current)
    for bucket in buckets:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world.size
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def all_mean(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of ``value`` over the processes (``value`` itself alone)."""
    if not world.distributed:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world.size


def any_true(flag: torch.Tensor, world: World) -> bool:
    """Whether ``flag`` (a bool tensor) is True on any process; one host sync."""
    if world.distributed:
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation: a function of the run seed, the epoch and the image
    index only, so a sample is augmented the same whatever the number of data workers or
    processes."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 1) % 2**62


class EpochSampler(Sampler):
    """The epoch's order of a process: a permutation of the dataset seeded by (seed, epoch), cut
    into global batches of ``batch_size`` (the last incomplete one dropped); process ``rank`` takes
    its contiguous ``batch_size / size`` slice of each. Yields ``(index, sample_seed)`` pairs for
    :class:`SeededSamples`.

    Raises:
        ValueError: ``batch_size`` not divisible by the number of processes, or larger than the
            dataset.
    """

    def __init__(self, length: int, batch_size: int, seed: int, world: World = SINGLE):
        if batch_size % world.size:
            raise ValueError(f"batch_size={batch_size} is not divisible by the {world.size} processes")
        if length < batch_size:
            raise ValueError(f"training set has {length} images, fewer than batch_size={batch_size}")
        self.length, self.batch_size, self.seed, self.world = length, batch_size, seed, world
        self.local_batch = batch_size // world.size
        self.iterations = length // batch_size
        self.epoch, self.permutation_seed = 0, seed

    def set_epoch(self, epoch: int, permutation_seed: int) -> None:
        """Select the epoch (the samples' seeds) and the seed of its permutation."""
        self.epoch, self.permutation_seed = epoch, permutation_seed

    def __len__(self) -> int:
        return self.iterations * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.permutation_seed)
        order = torch.randperm(self.length, generator=generator)[: self.iterations * self.batch_size].tolist()
        start = self.world.rank * self.local_batch
        for i in range(self.iterations):
            for index in order[i * self.batch_size + start : i * self.batch_size + start + self.local_batch]:
                yield index, sample_seed(self.seed, self.epoch, index)


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is produced with torch, numpy and ``random``
    seeded by ``seed``, and the caller's random states restored afterwards (the model's dropout
    stream does not depend on how many samples a process loaded)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)


__all__ = [
    "SINGLE",
    "EpochSampler",
    "SeededSamples",
    "World",
    "all_mean",
    "any_true",
    "average_gradients",
    "barrier",
    "init_distributed",
    "sample_seed",
]
