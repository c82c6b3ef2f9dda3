"""Overhead of the loop's TensorBoard event files per epoch: the same training run with
``LoopConfig.tensorboard`` on and off, in one process, alternated to share the machine's load.

Each run trains a DeepLabV3 (``--backbone``, random init) on ``--images`` generated demo images
(:func:`pipeline.data.synthetic.generate`, ``--size`` px) for ``--epochs`` epochs, evaluating
after every epoch (``eval_every: 1``, the evaluate stage's :func:`make_validator` on ``--val``
images) so that the image summaries are included. Measured per epoch:

- wall time of :meth:`Trainer.fit` divided by the epochs, on and off (median over
  ``--repeats`` runs of each, alternated off/on) and their ratio;
- the time spent inside the TensorBoard writer's calls, timed directly, as a fraction of an epoch
  off (the overhead without the noise of two separate runs): scalars (log_epoch + flush) and
  images (log_images: 4 forward passes of val images per evaluation, the bulk of it).

Writes ``benchmarks/results/tensorboard.json``.

Run: ``python benchmarks/bench_tensorboard.py [--images 64 --size 96 --epochs 3 --repeats 2 --threads 2]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from pipeline.data.datasets import pixel_dataset  # noqa: E402
from pipeline.data.prepare import DEFAULT_TRAIN_LIST, DEFAULT_VAL_LIST, prepare  # noqa: E402
from pipeline.data.splits import build_splits  # noqa: E402
from pipeline.data.synthetic import generate  # noqa: E402
from pipeline.eval.evaluate import make_validator  # noqa: E402
from pipeline.io import read_json, write_json  # noqa: E402
from pipeline.methods import build_method  # noqa: E402
from pipeline.models import build_segmenter  # noqa: E402
from pipeline.train import tensorboard as tb  # noqa: E402
from pipeline.train.loop import LoopConfig, Trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tensorboard.json"


class TimedBoard(tb.TensorBoardLog):
    """The loop's writer, with the time spent in its calls accumulated per call in ``seconds``
    (``scalars``: log_epoch + flush; ``images``: log_images, its forward passes included)."""

    seconds = {"scalars": 0.0, "images": 0.0}

    def _timed(self, part, method, *args):
        start = time.perf_counter()
        try:
            return method(self, *args)
        finally:
            TimedBoard.seconds[part] += time.perf_counter() - start

    def log_epoch(self, *args):
        return self._timed("scalars", tb.TensorBoardLog.log_epoch, *args)

    def log_images(self, *args):
        return self._timed("images", tb.TensorBoardLog.log_images, *args)

    def flush(self):
        return self._timed("scalars", tb.TensorBoardLog.flush)


def one_run(root: Path, tensorboard: bool, args: argparse.Namespace, run_dir: Path) -> float:
    """Wall seconds of one ``fit`` (fresh model, same seed, same data)."""
    split = read_json(root / "step0.json")
    train = {"crop_size": args.size, "scale_range": [0.75, 1.25]}
    method = build_method("base", {"loss": "ce", "head_lr_mult": 1.0})
    dataset = pixel_dataset(root / "dataset.json", split["ids"], train, "15-5", 0)  # as train-base
    torch.manual_seed(0)
    model = build_segmenter(
        {"backbone": args.backbone, "output_stride": args.output_stride, "pretrained": "none"}, [16]
    )
    validate = make_validator(root / "dataset.json", "15-5", 0, torch.device("cpu"), batch_size=8)
    cfg = LoopConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=0.01,
        precision="float32",
        eval_every=1,
        tensorboard=tensorboard,
    )
    trainer = Trainer(model, method, dataset, cfg, run_dir, torch.device("cpu"), validate=validate)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="training images (generated demo set)")
    parser.add_argument("--val", type=int, default=16, help="validation images (evaluated every epoch)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting, alternated off/on")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not tb.tensorboard_available():
        raise SystemExit("tensorboard is not installed: pip install -e '.[tensorboard]'")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # the loop builds its writer through this name: swap in the timed one
    import pipeline.train.loop as loop

    loop.TensorBoardLog = TimedBoard
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", n_train=args.images, n_val=args.val, size=args.size, seed=0)
        write_json(root / "dataset.json", prepare(root / "data", Path(DEFAULT_TRAIN_LIST), Path(DEFAULT_VAL_LIST)))
        index = read_json(root / "dataset.json")
        steps = build_splits({i: index["index"][i] for i in index["splits"]["train"]}, "15-5", "overlap", "bench")
        write_json(root / "step0.json", steps[0])
        times: dict[bool, list[float]] = {False: [], True: []}
        board_seconds: dict[str, list[float]] = {"scalars": [], "images": []}
        for repeat in range(args.repeats):
            for setting in (False, True):
                TimedBoard.seconds = {"scalars": 0.0, "images": 0.0}
                seconds = one_run(root, setting, args, root / f"run_{setting}_{repeat}")
                times[setting].append(seconds / args.epochs)
                if setting:
                    for part, value in TimedBoard.seconds.items():
                        board_seconds[part].append(value / args.epochs)
                print(
                    f"tensorboard {'on ' if setting else 'off'} run {repeat + 1}: {seconds / args.epochs:.3f} s/epoch"
                )
        events = sum(len(list((root / f"run_True_{r}").glob("events.out.tfevents.*"))) for r in range(args.repeats))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    scalars, images = (statistics.median(board_seconds[part]) for part in ("scalars", "images"))
    inside = scalars + images
    result = {
        "epoch_s_off": off,
        "epoch_s_on": on,
        "ratio_on_off": on / off,
        "writer_s_per_epoch": inside,
        "writer_fraction_of_epoch": inside / off,
        "scalars_s_per_epoch": scalars,
        "images_s_per_epoch": images,
        "runs": {"off": times[False], "on": times[True]},
        "event_files": events,
        "settings": vars(args) | {"out": str(args.out)},
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    write_json(args.out, result)
    print(
        f"per epoch: off {off:.3f} s, on {on:.3f} s, ratio on/off {on / off:.4f}; "
        f"inside the writer {1000 * inside:.1f} ms/epoch = {100 * inside / off:.2f}% of an epoch "
        f"(scalars {1000 * scalars:.1f} ms, images {1000 * images:.1f} ms) -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
