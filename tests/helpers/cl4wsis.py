"""Small CL4WSIS settings shared by the tests/test_cl4wsis_*.py modules: a ResNet-18 at output
stride 8 with a narrow instance branch (the stride-8 and stride-4 levels), and one torch thread."""

from __future__ import annotations

import pytest
import torch

#: ``model`` section: ResNet-18 from scratch at output stride 8, a 32-channel ASPP head.
MODEL = {"backbone": "resnet18", "output_stride": 8, "pretrained": "none", "head_channels": 32}
#: ``methods.cl4wsis.instance``: the instance branch, narrow (tests run on 2 CPU cores).
INSTANCE = {
    "low_level_strides": [8, 4],
    "low_level_project": [16, 8],
    "aspp_channels": 32,
    "decoder_channels": 16,
    "center_head_channels": 16,
    "offset_head_channels": 8,
    "atrous_rates": [1, 2, 3],
}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine several threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
