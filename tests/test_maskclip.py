"""MaskCLIP dense scores (FMWISS Eq. 1-3) on a random-init open_clip ViT, against hand computation."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from pipeline.data.classes import VOC_CLASSES
from pipeline.foundation.maskclip import (
    CLIP_CLASS_NAMES,
    MASKCLIP_VOC_CLASSES,
    dense_clip_scores,
    interpolate_pos_embed,
    is_torchscript_archive,
    load_clip,
    maskclip_features,
    pixel_text_scores,
    text_embeddings,
)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model, tokenizer = load_clip("ViT-S-16", "none")
    return model, tokenizer


def _layer_norm(x, ln):
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def test_last_block_takes_the_value_path_only(clip):
    model, _ = clip
    visual = model.visual
    torch.manual_seed(1)
    images = torch.randn(2, 3, 224, 224)  # native grid: no positional interpolation involved
    with torch.no_grad():
        tokens = visual._embeds(images)  # open_clip's own embedding
        for block in visual.transformer.resblocks[:-1]:
            tokens = block(tokens)
        last = visual.transformer.resblocks[-1]
        width = tokens.shape[-1]
        # by hand from the block's weights: v = W_v ln_1(x) + b_v, out-proj, residual, MLP
        w_in, b_in = last.attn.in_proj_weight, last.attn.in_proj_bias
        v = _layer_norm(tokens, last.ln_1) @ w_in[2 * width :].T + b_in[2 * width :]
        y = tokens + v @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
        hidden = F.gelu(_layer_norm(y, last.ln_2) @ last.mlp.c_fc.weight.T + last.mlp.c_fc.bias)
        y = y + hidden @ last.mlp.c_proj.weight.T + last.mlp.c_proj.bias
        expected = _layer_norm(y[:, 1:], visual.ln_post) @ visual.proj
        expected = expected / expected.norm(dim=-1, keepdim=True)
        got = maskclip_features(visual, images)
        # the ordinary last block (with attention) gives something else
        with_attention = visual.ln_post(last(tokens)[:, 1:]) @ visual.proj
    assert got.shape == (2, 14, 14, visual.output_dim)
    torch.testing.assert_close(got.reshape(2, 196, -1), expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(F.normalize(with_attention, dim=-1), expected, atol=1e-3)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2, 14, 14), atol=1e-5)


def test_pixel_text_scores_are_dot_products(clip):
    model, _ = clip
    torch.manual_seed(2)
    images = torch.randn(1, 3, 64, 96)
    text = F.normalize(torch.randn(3, model.visual.output_dim), dim=-1)
    with torch.no_grad():
        features = maskclip_features(model.visual, images)
        scores = dense_clip_scores(model, images, text)
    assert scores.shape == (1, 3, 4, 6)
    for k in range(3):
        for i, j in ((0, 0), (3, 5), (2, 1)):
            assert scores[0, k, i, j].item() == pytest.approx(float(features[0, i, j] @ text[k]), abs=1e-6)
    assert scores.abs().max() <= 1 + 1e-6
    assert torch.equal(pixel_text_scores(features, text), scores)


def test_batch_gives_the_scores_of_single_images(clip):
    model, _ = clip
    torch.manual_seed(3)
    images = torch.randn(3, 3, 48, 80)
    text = F.normalize(torch.randn(2, model.visual.output_dim), dim=-1)
    with torch.no_grad():
        batched = dense_clip_scores(model, images, text)
        single = torch.cat([dense_clip_scores(model, images[i : i + 1], text) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_positional_embedding_interpolation():
    pos = torch.randn(1 + 3 * 4, 5)
    assert interpolate_pos_embed(pos, (3, 4), (3, 4)) is pos
    constant = torch.cat([torch.randn(1, 5), torch.ones(12, 5) * 2.5])
    resized = interpolate_pos_embed(constant, (3, 4), (6, 2))
    assert resized.shape == (13, 5)
    assert torch.equal(resized[0], constant[0])
    torch.testing.assert_close(resized[1:], torch.full((12, 5), 2.5))
    with pytest.raises(ValueError, match="rows"):
        interpolate_pos_embed(pos, (4, 4), (2, 2))


def test_input_not_a_multiple_of_the_patch_is_rejected(clip):
    with pytest.raises(ValueError, match="multiple of the patch"):
        maskclip_features(clip[0].visual, torch.zeros(1, 3, 50, 64))


def test_text_embeddings_average_the_prompt_ensemble(clip):
    model, tokenizer = clip
    from open_clip import zero_shot_metadata

    with torch.no_grad():
        got = text_embeddings(model, tokenizer, [16, 20], "simple")
        expected = []
        for name in ("potted plant", "tv monitor"):
            texts = [template(name) for template in zero_shot_metadata.SIMPLE_IMAGENET_TEMPLATES]
            per_template = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
            expected.append(F.normalize(per_template.mean(0), dim=-1))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="class index 0"):
        text_embeddings(model, tokenizer, [0], "photo")


def test_clip_class_names_are_maskclips():
    # chongzhou96/MaskCLIP tools/maskclip_utils/prompt_engineering.py, voc_classes, verbatim
    maskclip = (
        "['airplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'dining table', "
        "'dog', 'horse', 'motorbike', 'person', 'potted plant', 'sheep', 'sofa', 'train', 'tv monitor']"
    )
    assert str(list(MASKCLIP_VOC_CLASSES)) == maskclip
    assert [CLIP_CLASS_NAMES[c] for c in range(1, 21)] == list(MASKCLIP_VOC_CLASSES)
    assert CLIP_CLASS_NAMES[1] == "airplane"
    assert CLIP_CLASS_NAMES[11] == "dining table"
    assert CLIP_CLASS_NAMES[16] == "potted plant"
    assert CLIP_CLASS_NAMES[20] == "tv monitor"
    assert CLIP_CLASS_NAMES[14] == "motorbike"
    # same classes as VOC's index order: only the wording differs
    renamed = {"aeroplane": "airplane", "diningtable": "dining table", "pottedplant": "potted plant"}
    renamed["tvmonitor"] = "tv monitor"
    assert [renamed.get(name, name) for name in VOC_CLASSES[1:]] == list(MASKCLIP_VOC_CLASSES)


def test_missing_local_weights_give_a_helpful_error(tmp_path):
    with pytest.raises(RuntimeError, match="coseg.clip.pretrained"):
        load_clip("ViT-S-16", str(tmp_path / "missing.pt"))


def test_openai_tag_is_built_with_quick_gelu(monkeypatch, clip):
    import open_clip

    seen = {}

    def fake_create_model(name, **kwargs):  # no network: record what would be built
        seen.update(kwargs, name=name)
        return clip[0]

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    load_clip("ViT-B-16", "openai")
    assert seen["name"] == "ViT-B-16" and seen["pretrained"] == "openai" and seen["force_quick_gelu"] is True
    load_clip("ViT-B-16", "laion2b_s34b_b88k")
    assert seen["force_quick_gelu"] is False
    load_clip("ViT-B-16", "none")
    assert seen["pretrained"] is None and seen["force_quick_gelu"] is False


def test_local_checkpoint_needs_quick_gelu_and_gets_the_activation_asked_for(tmp_path, clip):
    from open_clip.transformer import QuickGELU

    torch.save(clip[0].state_dict(), tmp_path / "vits16.pt")
    with pytest.raises(ValueError, match="coseg.clip.quick_gelu is required"):
        load_clip("ViT-S-16", str(tmp_path / "vits16.pt"))
    for quick, activation in ((True, QuickGELU), (False, torch.nn.GELU)):
        model, _ = load_clip("ViT-S-16", str(tmp_path / "vits16.pt"), quick_gelu=quick)
        assert all(type(block.mlp.gelu) is activation for block in model.visual.transformer.resblocks)
        assert torch.equal(model.visual.proj, clip[0].visual.proj)
    # the activation changes the features: a silent mismatch would matter
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        quick = maskclip_features(load_clip("ViT-S-16", str(tmp_path / "vits16.pt"), quick_gelu=True)[0].visual, images)
        exact = maskclip_features(clip[0].visual, images)
    assert not torch.allclose(quick, exact, atol=1e-3)


def test_quick_gelu_follows_the_tag_unless_set(monkeypatch, clip):
    import open_clip

    seen = {}

    def fake_create_model(name, **kwargs):  # no network
        seen.update(kwargs, name=name)
        return clip[0]

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    load_clip("ViT-B-16", "openai", quick_gelu=None)
    assert seen["force_quick_gelu"] is True
    load_clip("ViT-B-16", "openai", quick_gelu=False)  # explicit: honoured (with a warning)
    assert seen["force_quick_gelu"] is False
    load_clip("ViT-B-16", "laion2b_s34b_b88k", quick_gelu=True)
    assert seen["force_quick_gelu"] is True
    load_clip("ViT-B-16", "none", quick_gelu=True)
    assert seen["force_quick_gelu"] is True
    load_clip("ViT-B-16-quickgelu", "none")  # the architecture has it
    assert seen["force_quick_gelu"] is True
    with pytest.raises(ValueError, match="QuickGELU architecture"):
        load_clip("ViT-B-16-quickgelu", "none", quick_gelu=False)


def test_torchscript_checkpoint_is_refused_with_how_to_convert_it(tmp_path):
    with warnings.catch_warnings():  # torch.jit.script is deprecated (FutureWarning); OpenAI's file is one
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "ViT-B-16.pt"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    assert is_torchscript_archive(tmp_path / "ViT-B-16.pt")
    assert not is_torchscript_archive(tmp_path / "state.pt")
    with pytest.raises(ValueError, match="TorchScript") as error:
        load_clip("ViT-B-16", str(tmp_path / "ViT-B-16.pt"), quick_gelu=True)
    message = str(error.value)
    assert "torch.jit.load" in message and "state_dict()" in message and "pretrained: openai" in message
    assert "quick_gelu: true" in message
