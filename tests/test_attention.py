"""Seed-guided self-attention (FMWISS Eq. 4) of a random-init timm ViT, seeds, checkpoint loading."""

import numpy as np
import pytest
import torch

from pipeline.foundation.attention import (
    CHECKPOINT_URLS,
    load_ssl,
    sample_seeds,
    seed_attention,
    seed_rng,
)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return load_ssl("vit_small_patch16_224", "none")


def _manual_attention(model, images):
    """softmax(q K^T / sqrt(d)) of the last block, by hand from its qkv weights: (B, n, L, L)."""
    with torch.no_grad():
        x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
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
