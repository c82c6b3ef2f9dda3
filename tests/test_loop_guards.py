"""Guards of the shared loop: a non-finite or diverging loss stops the run naming the epoch and the
iterations and keeps the last checkpoint; an unreadable checkpoint is set aside, never trusted."""

import logging
import pathlib

import pytest
import torch
from helpers.distributed_worker import CE, Images, Tiny

from pipeline.train.loop import DivergenceError, LoopConfig, Trainer


class Exploding(CE):
    """CE, replaced by ``value`` from the ``at``-th call on."""

    def __init__(self, at: int, value: float):
        self.calls, self.at, self.value = 0, at, value

    def losses(self, batch, out, epoch):
        self.calls += 1
        losses = super().losses(batch, out, epoch)
        if self.calls >= self.at:
            losses["ce"] = losses["ce"] * 0 + self.value
        return losses


def _trainer(tmp_path, objective, **cfg):
    torch.manual_seed(0)
    config = LoopConfig(epochs=3, batch_size=4, lr=0.1, seed=0, precision="float32", finite_check_every=2, **cfg)
    return Trainer(Tiny(), objective, Images(), config, tmp_path, torch.device("cpu"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e25])
def test_bad_loss_stops_naming_epoch_and_iterations(tmp_path, value):
    # 16 images / batch 4 = 4 iterations per epoch; the 6th call is epoch 2, iteration 1 (checked at 1)
    trainer = _trainer(tmp_path, Exploding(at=6, value=value))
    with pytest.raises(DivergenceError, match=r"epoch 2, iterations 0-1 .*checkpoint.*is kept"):
        trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_unreadable_checkpoint_is_set_aside_and_training_restarts(tmp_path, caplog):
    _trainer(tmp_path, CE()).fit()
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated, e.g. a kill during a copy
    trainer = _trainer(tmp_path, CE())
    with caplog.at_level(logging.WARNING):
        assert not trainer.try_resume()
    assert "cannot be read" in caplog.text and "checkpoint.pt" in caplog.text
    assert (tmp_path / "checkpoint.pt.unreadable").is_file() and not (tmp_path / "checkpoint.pt").exists()
    assert len(trainer.fit()) == 3  # from scratch


def test_checkpoint_bytes_do_not_depend_on_the_temporary_name(tmp_path):
    a, b = _trainer(tmp_path / "a", CE()), _trainer(tmp_path / "b", CE())
    for trainer in (a, b):
        trainer.run_dir.mkdir(parents=True)
        trainer.save_checkpoint(0)
    assert (tmp_path / "a/checkpoint.pt").read_bytes() == (tmp_path / "b/checkpoint.pt").read_bytes()


class _Payload:
    """Creates a marker file when unpickled (a stand-in for code hidden in a shared checkpoint)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, caplog):
    marker = tmp_path / "pwned"
    torch.save({"fingerprint": "x", "payload": _Payload(marker)}, tmp_path / "checkpoint.pt")
    trainer = _trainer(tmp_path, CE())
    with caplog.at_level(logging.WARNING):
        assert not trainer.try_resume()
    assert not marker.exists()
    assert "cannot be read" in caplog.text and (tmp_path / "checkpoint.pt.unreadable").is_file()
