"""Trains a tiny segmenter with the shared loop, alone or as one of several torchrun processes;
writes the final weights and history to --out (rank 0). Used by tests/test_distributed.py."""

import argparse
import json
import sys

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from pipeline.objective import Objective
from pipeline.train.distributed import init_distributed
from pipeline.train.loop import LoopConfig, Trainer


class Tiny(nn.Module):
    """Two convs, no batch norm (CPU processes have no SyncBatchNorm): the gradient average alone
    makes the processes equal to one process."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        features = F.relu(self.body(x))
        return {"out": self.head(features), "features": features}


class Images(Dataset):
    """16 random images with labels; a random horizontal flip drawn from torch's RNG (seeded per
    sample by the loop)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(16, 3, 12, 12, generator=g)
        self.labels = torch.randint(0, 3, (16, 12, 12), generator=g)

    def __len__(self):
        return 16

    def __getitem__(self, i):
        image, gt = self.images[i], self.labels[i]
        if torch.rand(()) < 0.5:
            image, gt = image.flip(-1), gt.flip(-1)
        return {"id": str(i), "image": image, "gt": gt}


class CE(Objective):
    name = "ce"

    def losses(self, batch, out, epoch):
        return {"ce": F.cross_entropy(out["out"], batch["gt"])}


class Interrupt(Exception):
    pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop-after", type=int, default=0, help="raise after this epoch (a kill)")
    args = parser.parse_args()
    world, device = init_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    model = Tiny()
    cfg = LoopConfig(epochs=3, batch_size=8, lr=0.1, seed=3, precision="float32", eval_every=1)

    def validate(model):
        if args.stop_after and len(trainer.history) + 1 > args.stop_after:
            raise Interrupt
        return {}

    trainer = Trainer(model, CE(), Images(), cfg, args.run_dir, device, validate=validate, world=world)
    try:
        history = trainer.fit()
    except Interrupt:
        return 3
    if world.is_main:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, args.out)
        with open(args.out + ".json", "w") as handle:
            json.dump({"history": history, "resumed_at": trainer.start_epoch}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
