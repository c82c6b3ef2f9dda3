"""Seed-guided self-attention (FMWISS Eq. 4) of a random-init timm ViT, seeds, checkpoint loading."""

import argparse
import math
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.foundation.attention import (
    CHECKPOINT_URLS,
    interpolate_pos_encoding,
    load_ssl,
    sample_seeds,
    seed_attention,
    seed_rng,
)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return load_ssl("vit_small_patch16_224", "none")


def _dino_interpolate_pos_encoding(pos_embed, x, w, h, patch_size):
    """DINO's ``VisionTransformer.interpolate_pos_encoding`` (facebookresearch/dino
    vision_transformer.py; iBOT's is the same), written out from its code: ``x`` (B, 1 + npatch,
    dim) tokens of an image (B, nc, w, h) (DINO's names: w = rows, h = columns)."""
    npatch = x.shape[1] - 1
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def _dino_tokens(model, images):
    """DINO's ``prepare_tokens``: patch tokens, class token, DINO's interpolated position embedding."""
    batch, _, w, h = images.shape
    x = torch.nn.functional.conv2d(images, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=16)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((model.cls_token.expand(batch, -1, -1), x), dim=1)
    return x + _dino_interpolate_pos_encoding(model.pos_embed, x, w, h, 16)


def _manual_attention(model, images):
    """softmax(q K^T / sqrt(d)) of the last block, by hand from its qkv weights: (B, n, L, L)."""
    with torch.no_grad():
        x = _dino_tokens(model, images)
        for block in model.blocks[:-1]:
            x = block(x)
        last = model.blocks[-1]
        x = torch.nn.functional.layer_norm(
            x, last.norm1.normalized_shape, last.norm1.weight, last.norm1.bias, last.norm1.eps
        )
        qkv = x @ last.attn.qkv.weight.T + last.attn.qkv.bias  # (B, L, 3C)
        batch, tokens, _ = qkv.shape
        heads = last.attn.num_heads
        dim = qkv.shape[-1] // 3 // heads
        q, k, _ = qkv.reshape(batch, tokens, 3, heads, dim).permute(2, 0, 3, 1, 4)
        return torch.softmax(q @ k.transpose(-2, -1) / dim**0.5, dim=-1)


def test_seed_attention_is_the_mean_of_softmax_rows(vit):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)  # 4 x 6 patch grid
    seeds = torch.tensor(
        [
            [[[0, 0], [2, 3], [-1, -1]], [[3, 5], [-1, -1], [-1, -1]]],
            [[[1, 1], [1, 2], [3, 0]], [[-1, -1], [-1, -1], [-1, -1]]],
        ]
    )
    with torch.no_grad():
        got = seed_attention(vit, images, seeds)
    full = _manual_attention(vit, images)  # (2, 6, 25, 25), token 0 = class token

    def expected(b, points):
        rows = [1 + r * 6 + c for r, c in points]
        return full[b][:, rows, 1:].mean(dim=(0, 1)).reshape(4, 6)

    assert got.shape == (2, 2, 4, 6)
    torch.testing.assert_close(got[0, 0], expected(0, [(0, 0), (2, 3)]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[0, 1], expected(0, [(3, 5)]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1, 0], expected(1, [(1, 1), (1, 2), (3, 0)]), atol=1e-6, rtol=1e-5)
    assert torch.count_nonzero(got[1, 1]) == 0  # no valid seed: zeros


def test_seed_attention_agrees_with_timms_own_attention_matrix(vit):
    """timm's non-fused path computes softmax(qK^T) and passes it through attn_drop: catch it there."""
    torch.manual_seed(2)
    images = torch.randn(1, 3, 48, 48)
    attn = vit.blocks[-1].attn
    captured = []
    handle = attn.attn_drop.register_forward_hook(lambda m, args, out: captured.append(out))
    fused, attn.fused_attn = attn.fused_attn, False
    try:
        with torch.no_grad():
            vit.forward_features(images)
            got = seed_attention(vit, images, torch.tensor([[[[1, 2]]]]))
    finally:
        attn.fused_attn = fused
        handle.remove()
    timm_rows = captured[0][0, :, 1 + 1 * 3 + 2, 1:].mean(0).reshape(3, 3)
    torch.testing.assert_close(got[0, 0], timm_rows, atol=1e-6, rtol=1e-5)


def test_pos_embed_is_resampled_by_dinos_rule_at_a_non_square_size(vit):
    """448 x 320 input: a 28 x 20 grid from the checkpoint's 14 x 14, as DINO/iBOT do it."""
    from timm.layers import resample_abs_pos_embed

    with torch.no_grad():
        tokens = torch.zeros(1, 1 + 28 * 20, 384)
        dino = _dino_interpolate_pos_encoding(vit.pos_embed, tokens, 448, 320, 16)
        ours = interpolate_pos_encoding(vit.pos_embed, (28, 20))
        assert ours.shape == dino.shape == (1, 1 + 28 * 20, 384)
        torch.testing.assert_close(ours, dino, atol=0.0, rtol=0.0)
        # the model itself embeds the image as DINO's prepare_tokens does
        torch.manual_seed(4)
        images = torch.randn(2, 3, 448, 320)
        torch.testing.assert_close(vit._pos_embed(vit.patch_embed(images)), _dino_tokens(vit, images))
        # timm's own dynamic_img_size rule (exact ratio, antialias) gives other embeddings
        timm_rule = resample_abs_pos_embed(vit.pos_embed, new_size=(28, 20), old_size=(14, 14), num_prefix_tokens=1)
        assert float((timm_rule - ours).abs().max()) > 1e-3
        # DINO skips only a square grid of the checkpoint's size; 7 x 28 = 196 positions is resampled
        assert interpolate_pos_encoding(vit.pos_embed, (14, 14)) is vit.pos_embed
        tall = torch.zeros(1, 1 + 7 * 28, 384)
        torch.testing.assert_close(
            interpolate_pos_encoding(vit.pos_embed, (7, 28)),
            _dino_interpolate_pos_encoding(vit.pos_embed, tall, 112, 448, 16),
            atol=0.0,
            rtol=0.0,
        )
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_encoding(torch.zeros(1, 1 + 12, 8), (3, 4))


def test_seed_attention_at_a_non_square_size_uses_dinos_position_embedding(vit):
    torch.manual_seed(6)
    images = torch.randn(1, 3, 448, 320)
    with torch.no_grad():
        got = seed_attention(vit, images, torch.tensor([[[[3, 17], [20, 2]]]]))
    full = _manual_attention(vit, images)
    rows = [1 + 3 * 20 + 17, 1 + 20 * 20 + 2]
    expected = full[0][:, rows, 1:].mean(dim=(0, 1)).reshape(28, 20)
    torch.testing.assert_close(got[0, 0], expected, atol=1e-6, rtol=1e-5)


def test_seed_outside_the_grid_is_rejected(vit):
    with pytest.raises(ValueError, match="outside the 4x4"):
        seed_attention(vit, torch.zeros(1, 3, 64, 64), torch.tensor([[[[4, 0]]]]))


def test_seeds_come_from_the_foreground_and_are_reproducible():
    foreground = np.zeros((6, 7), dtype=bool)
    foreground[1:4, 2:6] = True  # 12 cells
    foreground[5, 0] = True  # 13
    for image_id in ("a", "b", "2007_000032"):
        seeds = sample_seeds(foreground, 9, seed_rng(0, image_id))
        assert seeds.shape == (9, 2)
        assert foreground[seeds[:, 0], seeds[:, 1]].all()
        assert len({tuple(s) for s in seeds}) == 9  # without replacement
        again = sample_seeds(foreground, 9, seed_rng(0, image_id))
        assert np.array_equal(seeds, again)
    draws = {tuple(map(tuple, sample_seeds(foreground, 9, seed_rng(s, "a")))) for s in range(6)}
    assert len(draws) > 1  # the config seed matters
    # fewer foreground cells than seeds: all of them, then -1 padding
    few = np.zeros((3, 3), dtype=bool)
    few[0, 1] = few[2, 2] = True
    seeds = sample_seeds(few, 4, seed_rng(0, "x"))
    assert seeds[:2].tolist() == [[0, 1], [2, 2]] and (seeds[2:] == -1).all()
    assert (sample_seeds(np.zeros((3, 3), bool), 2, seed_rng(0, "x")) == -1).all()


def test_seed_rng_depends_on_seed_and_id_only():
    a = seed_rng(3, "img").integers(0, 2**31, 4)
    assert np.array_equal(a, seed_rng(3, "img").integers(0, 2**31, 4))
    assert not np.array_equal(a, seed_rng(4, "img").integers(0, 2**31, 4))
    assert not np.array_equal(a, seed_rng(3, "img2").integers(0, 2**31, 4))


def _backbone(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_ibot_and_dino_checkpoints_map_onto_timm(tmp_path, vit):
    state = _backbone(vit)
    # iBOT checkpoint_teacher.pth: {"state_dict": {...}} plus the mask token; full checkpoints:
    # {"teacher": {"backbone.*", "head.*"}}; DINO: a plain state dict.
    ibot = {"state_dict": {**state, "masked_embed": torch.zeros(384)}}
    full = {
        "teacher": {
            **{f"module.backbone.{k}": v for k, v in state.items()},
            "head.mlp.0.weight": torch.zeros(2, 384),
            "head.last_layer.weight_g": torch.ones(1),
        }
    }
    for name, obj, kind in (("ibot.pth", ibot, "ibot"), ("full.pth", full, "ibot"), ("dino.pth", state, "dino")):
        torch.save(obj, tmp_path / name)
        torch.manual_seed(5)
        model = load_ssl("vit_small_patch16_224", kind, tmp_path / name)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in state), name


def test_full_dino_training_checkpoint_gives_its_teacher(tmp_path, vit):
    """DINO main_dino.py saves {student, teacher, optimizer, epoch, args, dino_loss, fp16_scaler};
    the teacher is taken with ``backbone.`` stripped, as DINO's load_pretrained_weights does."""
    state = _backbone(vit)
    full = {
        "student": {f"module.backbone.{k}": torch.zeros_like(v) for k, v in state.items()},
        "teacher": {
            **{f"backbone.{k}": v for k, v in state.items()},
            "head.mlp.0.weight": torch.zeros(2, 384),
            "head.last_layer.weight_g": torch.ones(1),
        },
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536, data_path="/imagenet/train"),
        "dino_loss": {"center": torch.zeros(1, 65536)},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
    }
    torch.save(full, tmp_path / "checkpoint.pth")
    model = load_ssl("vit_small_patch16_224", "dino", tmp_path / "checkpoint.pth")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("kind", ["dino", "ibot"])
def test_refused_checkpoint_names_the_models_own_file(tmp_path, vit, kind):
    # args holding a Path: a global the safe loader refuses
    torch.save(
        {"teacher": _backbone(vit), "args": argparse.Namespace(output_dir=pathlib.PurePosixPath("/out"))},
        tmp_path / "c.pth",
    )
    with pytest.raises(ValueError) as error:
        load_ssl("vit_small_patch16_224", kind, tmp_path / "c.pth")
    message = str(error.value)
    if kind == "dino":
        assert "dino_deitsmall16_pretrain.pth" in message and "teacher" in message
        assert "checkpoint_teacher.pth" not in message and "iBOT" not in message
    else:
        assert CHECKPOINT_URLS["ibot"]["vit_small_patch16_224"] in message
        assert "dino_" not in message and "DINO" not in message


def test_checkpoint_pos_embed_of_another_grid_is_resampled(tmp_path):
    import timm

    torch.manual_seed(0)
    small = timm.create_model("vit_small_patch16_224", img_size=112, num_classes=0)  # 7 x 7 grid
    torch.save(small.state_dict(), tmp_path / "dino.pth")
    model = load_ssl("vit_small_patch16_224", "dino", tmp_path / "dino.pth")
    assert model.pos_embed.shape == (1, 1 + 14 * 14, 384)
    assert torch.equal(model.cls_token, small.cls_token)


def test_checkpoint_of_another_architecture_is_named(tmp_path, vit):
    state = _backbone(vit)
    del state["blocks.11.attn.qkv.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="blocks.11.attn.qkv.weight"):
        load_ssl("vit_small_patch16_224", "dino", tmp_path / "bad.pth")


def test_missing_ibot_checkpoint_says_where_to_download_it():
    with pytest.raises(FileNotFoundError) as error:
        load_ssl("vit_large_patch16_224", "ibot", None)
    message = str(error.value)
    assert CHECKPOINT_URLS["ibot"]["vit_large_patch16_224"] in message
    assert "vitl_16/checkpoint_teacher.pth" in message and "pretrained: none" in message
