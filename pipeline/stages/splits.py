"""Stage ``splits``: the training ids and image-level labels of every step of an incremental task.

The stage's command line; what it computes is documented in :mod:`pipeline.data.splits`.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Mapping
from pathlib import Path

from pipeline.data import tasks
from pipeline.data.classes import VOC_CLASSES
from pipeline.data.splits import build_splits, load_index, summarize_splits, summary_csv
from pipeline.data.subsets import apply_data_fraction
from pipeline.io import atomic_path, read_json, write_json, write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``splits`` stage."""
    source = parser.add_argument_group("class presence (either --index, or --labels-root and --train-list)")
    source.add_argument("--index", type=Path, help="index JSON written by prepare-data")
    source.add_argument("--split", default="train", help="id list of --index to use (default: train)")
    source.add_argument("--labels-root", type=Path, help="dataset root holding the label maps")
    source.add_argument(
        "--train-list", type=Path, help="training id list (relative paths are relative to --labels-root)"
    )
    source.add_argument(
        "--mask-dir",
        default="auto",
        help="mask folder under --labels-root (default: auto = SegmentationClassAug "
        "if present, else SegmentationClass)",
    )
    parser.add_argument("--task", required=True, help="incremental task, e.g. 15-5, 10-10, 15-1")
    parser.add_argument("--protocol", required=True, choices=tasks.PROTOCOLS)
    parser.add_argument("--dataset", default="voc", help="dataset name recorded in the JSON files")
    parser.add_argument(
        "--task-table",
        choices=sorted(tasks.TASKS),
        help="class set / task table (default: the --index's task_table, e.g. coco80 for COCO-to-VOC; else voc)",
    )
    parser.add_argument(
        "--relaxed",
        action="store_true",
        help="image-level labels for every seen class, not only the new ones (WILSON Table 5)",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes reading label maps (0: in this process)")
    parser.add_argument(
        "--data-fraction",
        type=float,
        help="keep this fraction (0, 1] of the training images of every step t >= 1, a seeded subset "
        "recorded in the split (FMWISS Table 10; pipeline.data.subsets)",
    )
    parser.add_argument("--fraction-seed", type=int, default=0, help="seed of --data-fraction's subset (default 0)")
    out = parser.add_argument_group("output (one of)")
    out.add_argument("--outdir", type=Path, help="output folder: every step{t}.json, summary.json, summary.csv")
    out.add_argument("--step", type=int, help="with --out: write only the split of this step (what a rule asks for)")
    out.add_argument("--out", type=Path, help="with --step: the step{t}.json to write")
    out.add_argument("--summary", type=Path, help="write only the summary JSON here (and its .csv beside it)")


def _print_summary(summary: Mapping) -> None:
    print(
        f"splits {summary['dataset']} {summary['task']} {summary['protocol']}{' relaxed' if summary['relaxed'] else ''}"
    )
    print(f"{'step':>4}  {'images':>6}  new classes")
    for row in summary["steps"]:
        new = row["new_classes"]
        names = ", ".join(VOC_CLASSES[c] for c in new) if summary["task_table"] == "voc" else str(new)
        print(f"{row['step']:>4}  {row['images']:>6}  {names}")


def run(args: argparse.Namespace) -> None:
    """Build, summarise and write the splits of one task and protocol (see module docstring)."""
    if args.task_table is None:  # the labels' numbering, as the prepare-data index records it
        doc = read_json(args.index) if args.index is not None else {}
        args.task_table = doc.get("task_table", "voc") if isinstance(doc, dict) else "voc"
    tasks.task_steps(args.task, args.task_table)  # fail on a bad task before reading anything
    if args.index is not None:
        if args.labels_root is not None or args.train_list is not None:
            raise ValueError("splits: give either --index or --labels-root/--train-list, not both")
        index = load_index(args.index, args.split)
        source = {"index": str(args.index), "split": args.split}
    elif args.labels_root is not None and args.train_list is not None:
        from pipeline.data import voc  # imports torch: only when label maps are read

        train_list = args.labels_root / args.train_list
        ids = voc.read_ids(train_list)
        if not ids:
            raise voc.DatasetError(f"{train_list}: training id list holds no ids; expected one image id per line")
        index = voc.index_dataset(args.labels_root, ids, args.mask_dir, images=False, workers=args.workers)
        source = {"labels_root": str(args.labels_root), "train_list": str(train_list), "mask_dir": args.mask_dir}
    else:
        raise ValueError("splits: expected --index, or both --labels-root and --train-list")

    steps = build_splits(
        index, args.task, args.protocol, args.relaxed, dataset=args.dataset, task_table=args.task_table
    )
    if args.data_fraction is not None:  # step 0 (the shared base model) keeps every image
        steps = [s if s["step"] == 0 else apply_data_fraction(s, args.data_fraction, args.fraction_seed) for s in steps]
    summary = summarize_splits(steps, index)
    summary["source"] = source

    if args.step is not None or args.out is not None:
        if args.step is None or args.out is None:
            raise ValueError("splits: --step and --out go together")
        if not 0 <= args.step < len(steps):
            raise ValueError(f"splits: task {args.task} has steps 0..{len(steps) - 1}, not {args.step}")
        write_json(args.out, steps[args.step])
        print(f"step {args.step}: {len(steps[args.step]['ids'])} images -> {args.out}")
        return
    if args.summary is not None:
        with atomic_path(args.summary.with_suffix(".csv")) as csv_tmp:
            write_text(csv_tmp, summary_csv(summary))
            write_json(args.summary, summary)
        _print_summary(summary)
        return
    if args.outdir is None:
        raise ValueError("splits: expected --outdir, --step with --out, or --summary")

    # All files are completed under temporary names first; they are renamed only once every one
    # has been written (summary.json last), so a failure leaves none of this run's files behind.
    outdir = Path(args.outdir)
    with contextlib.ExitStack() as stack:
        summary_tmp = stack.enter_context(atomic_path(outdir / "summary.json"))
        csv_tmp = stack.enter_context(atomic_path(outdir / "summary.csv"))
        for split in steps:
            tmp = stack.enter_context(atomic_path(outdir / f"step{split['step']}.json"))
            write_json(tmp, split)
        write_text(csv_tmp, summary_csv(summary))
        write_json(summary_tmp, summary)
    _print_summary(summary)
