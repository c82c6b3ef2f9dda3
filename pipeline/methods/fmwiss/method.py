"""FMWISS (Yu et al., CVPR 2023): the fused co-segmentation masks of the new classes (Sec. 3.2)
train a plug-in ASPP teacher with a pixel BCE (Eq. 6) and a dense contrastive loss (Eq. 7); the
old model, with the labels of pasted memory-bank instances (Sec. 3.4, Eq. 8-9), supervises its
old classes; the teacher and the old model are distilled into the segmentation model through soft
targets and a BCE (Eq. 10-11); Eq. 12 sums the four terms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from pipeline.methods.base import OldModelMethod, StepContext, StepInputs
from pipeline.methods.fmwiss.data import coseg_dataset
from pipeline.methods.fmwiss.losses import (
    all_class_bce_loss,
    contrastive_pixel_classes,
    dense_contrastive_loss,
    distillation_targets,
    new_class_bce_loss,
    occlude_pseudo_labels,
    old_class_bce_loss,
    old_class_targets,
    overall_loss_terms,
    sample_class_points,
)
from pipeline.methods.fmwiss.teacher import ASPPTeacher
from pipeline.methods.registry import MethodSpec, register_method


def segmenter_atrous_rates(model: nn.Module) -> list[int]:
    """The three atrous rates of a :class:`pipeline.models.segmenter.Segmenter`'s ASPP (so the
    teacher's ASPP matches the model's output stride)."""
    return [int(branch[0].dilation[0]) for branch in model.head[0].convs[1:4]]


@register_method("fmwiss")
class FMWISS(OldModelMethod):
    """Objective of FMWISS; the loop trains the teacher with the segmentation model.

    Schedule (Sec. 4.2): "before training the segmentation model, we first warm up the teacher
    module for five epochs", then "we train all the models for 40 epochs": ``warmup_epochs`` run
    *before* the ``train_step.epochs`` (``warmup_before_training``; the loop holds the learning
    rate constant during them and decays it over the epochs after). During the warm-up only the
    teacher learns (its input features are detached and the student loss is not computed, so the
    segmenter gets no gradient) from L_BCE^new + λ L_DCL^new + L_BCE^old; then everything learns
    from Eq. 12, the
    teacher's losses reaching the encoder through its (no longer detached) input features.
    L_BCE^all does not train the teacher (its targets q are detached: the teacher is distilled
    into the student, Sec. 3.5). The old model runs under ``no_grad`` on ``batch["image"]`` (the
    augmented image x̂ with the pasted instances).

    Resolution: the teacher's logits (feature resolution h×w = H/os×W/os) are upsampled
    bilinearly to the image size H×W, where Eq. 6, 8-11 are computed against the full-resolution
    masks, old-model outputs and student outputs. The dense contrastive loss works on the
    teacher's embeddings at h×w: the pixel classes (:func:`contrastive_pixel_classes`) are
    downsampled there by nearest neighbour (``nearest-exact``: the pixel at each cell's centre).

    The batch (besides ``image`` and ``mask``, 255 = void/padding, not counted anywhere):
    ``labels`` (B, |Y^t|) image labels, ``pseudo`` (B, |C^t|, H, W) float {0, 1} fused masks,
    channel k ↔ ``context.new_classes[k]``, ``pasted`` (B, H, W) int64 old class of pasted pixels.

    Args:
        context: the step and the frozen step t-1 model.
        in_channels: channels of the encoder features the teacher reads.
        warmup_epochs: teacher-only epochs before the training epochs (5 in the paper, Sec. 4.2).
        lambda_dcl: λ, weight of L_DCL^new in Eq. 12 (0.1, Sec. 4.2, Table 5).
        tau: τ, temperature of Eq. 7 (0.1).
        points_per_class: points sampled per class present in the mini-batch for Eq. 7 (10).
        alpha: α of Eq. 10, hard/soft mix of the teacher for the new classes (0.5, Sec. 4.2).
        beta: β of Eq. 10, old model/teacher mix for the old classes (0.9, Sec. 4.2).
        head_lr_mult: learning-rate multiplier of the segmenter's head and of the teacher over
            the backbone's (WILSON's 0.01 / 0.001 = 10, which FMWISS follows).
        restrict_to_labels: in Eq. 10, zero the targets of the new classes an image is not
            labelled with (WILSON's public code; not in the FMWISS paper).
        pasted_one_hot: in Eq. 9, set the other old classes to 0 at pasted pixels (the pasted
            pixels carry a pixel label); False is the literal Eq. 9.
        suppress_background: where the fused co-segmentation masks mark a new object, the teacher's
            background target (Eq. 9) is 0 instead of σ(old background), and the student's
            background target (Eq. 10) is capped at 1 - the largest new-class target, as WILSON's
            Eq. 7 takes min(σ(old)^b, q^b). Not in the paper: taken literally (False), Eq. 10 asks
            for background ≈ β·σ(old)^b ≈ 0.9 on every new object, which the old model calls
            background (docs/lab-notes.md, FMWISS).
        atrous_rates: rates of the teacher's ASPP (:func:`segmenter_atrous_rates` of the model).
        teacher_channels: D, width of the teacher's ASPP and embeddings (256).
        teacher_prior: the teacher's object classes (old and new) start at this probability
            (classifier bias log(π / (1 - π)), background bias 0), as the segmenter's new classes
            do (``classifier_init = "prior"``). The paper does not give the teacher's
            initialisation; with a zero bias every class starts at σ = 0.5 and the first
            iterations only learn to push them all down (docs/lab-notes.md). None: bias 0.
        all_bce_reduction: reduction of Eq. 11 over the classes: ``sum`` (default; WILSON's Eq. 8,
            = L_BCE^all weighted by |Y^t| in Eq. 12) or ``mean`` (Eq. 11 as printed). With the
            mean, the gradient reaching a new class's classifier is the fraction of its pixels
            divided by |Y^t| (docs/lab-notes.md).
    Raises:
        ValueError: bad hyper-parameters (negative warm-up or λ, τ ≤ 0, points < 1, α/β outside
            [0, 1], teacher_prior outside (0, 1), all_bce_reduction not mean/sum).
    """

    classifier_init = "prior"  # sigmoid outputs (Eq. 11): new classes start at a low probability

    def __init__(
        self,
        context: StepContext,
        in_channels: int,
        warmup_epochs: int = 5,
        lambda_dcl: float = 0.1,
        tau: float = 0.1,
        points_per_class: int = 10,
        alpha: float = 0.5,
        beta: float = 0.9,
        head_lr_mult: float = 10.0,
        restrict_to_labels: bool = True,
        pasted_one_hot: bool = True,
        suppress_background: bool = True,
        atrous_rates: Sequence[int] = (6, 12, 18),
        teacher_channels: int = 256,
        teacher_prior: float | None = 0.01,
        all_bce_reduction: str = "sum",
    ):
        if warmup_epochs < 0 or lambda_dcl < 0:
            raise ValueError(f"warmup_epochs={warmup_epochs}, lambda_dcl={lambda_dcl}: must be ≥ 0")
        if tau <= 0 or points_per_class < 1:
            raise ValueError(f"tau={tau} must be > 0 and points_per_class={points_per_class} ≥ 1")
        if not (0.0 <= alpha <= 1.0 and 0.0 <= beta <= 1.0):
            raise ValueError(f"alpha={alpha}, beta={beta}: must be in [0, 1]")
        self.context = context
        if all_bce_reduction not in ("mean", "sum"):
            raise ValueError(f"all_bce_reduction={all_bce_reduction!r}: expected 'sum' or 'mean'")
        self.all_bce_reduction = all_bce_reduction
        if teacher_prior is not None and not 0.0 < teacher_prior < 1.0:
            raise ValueError(f"teacher_prior={teacher_prior}: must be in (0, 1) or None")
        self.teacher = ASPPTeacher(in_channels, context.num_classes, atrous_rates, teacher_channels)
        if teacher_prior is not None:
            with torch.no_grad():
                self.teacher.classifier.bias.zero_()
                self.teacher.classifier.bias[1:] = math.log(teacher_prior / (1.0 - teacher_prior))
        self.warmup_epochs, self.lambda_dcl, self.tau = warmup_epochs, lambda_dcl, tau
        self.points_per_class, self.alpha, self.beta = points_per_class, alpha, beta
        self.head_lr_mult, self.restrict_to_labels, self.pasted_one_hot = (
            head_lr_mult,
            restrict_to_labels,
            pasted_one_hot,
        )
        self.suppress_background = suppress_background
        self.warmup_before_training = warmup_epochs  # run by the loop before the training epochs

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], context: StepContext | None, model: nn.Module | None, spec: MethodSpec
    ) -> FMWISS:
        """``model``: the segmenter (its last encoder stage feeds the teacher, whose ASPP takes the
        segmenter's atrous rates). ``cfg["coseg"]`` and ``cfg["paste_prob"]`` are read by
        :meth:`dataset`."""
        method = cls(
            context,
            model.backbone.feature_info.channels()[-1],
            cfg["warmup_epochs"],
            cfg["lambda_dcl"],
            cfg["tau"],
            cfg["points_per_class"],
            cfg["alpha"],
            cfg["beta"],
            cfg["head_lr_mult"],
            restrict_to_labels=cfg["restrict_to_labels"],
            pasted_one_hot=cfg["pasted_one_hot"],
            suppress_background=cfg["suppress_background"],
            teacher_prior=cfg["teacher_prior"],
            all_bce_reduction=cfg["all_bce_reduction"],
            atrous_rates=segmenter_atrous_rates(model),
        )
        method.coseg_cfg, method.paste_prob = cfg["coseg"], cfg["paste_prob"]
        return method.bind(spec)

    def modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def dataset(self, inputs: StepInputs) -> Dataset:
        """Image-level ``labels``, the fused co-segmentation masks ``pseudo`` of the new classes and
        copy-paste of old-class instances (``pasted``) when the memory bank is given."""
        return coseg_dataset(
            inputs.data_index,
            inputs.split,
            inputs.train,
            inputs.num_classes,
            inputs.cache("coseg", "the coseg stage's .h5"),
            self.coseg_cfg,
            inputs.caches.get("memory"),
            self.paste_prob,
        )

    def _inputs(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        for key in ("pseudo", "pasted", "labels"):
            if key not in batch:
                raise KeyError(f"fmwiss needs batch[{key!r}] (supervision 'fmwiss' of the data side)")
        pasted = batch["pasted"].long()
        pseudo = occlude_pseudo_labels(batch["pseudo"].float(), pasted)
        return pseudo, pasted, batch["valid"]

    def targets(
        self, batch: dict, out: dict[str, Tensor], teacher: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """The teacher's upsampled logits, the old targets (Eq. 9) and the student's targets
        (Eq. 10) of a batch.

        Args:
            batch: see the class docstring.
            out: the segmentation model's output on ``batch["image"]``.
            teacher: the teacher's output on ``out["features"]`` (computed here if None).
        Returns:
            ``teacher_logits`` (B, |Y^t|, H, W) float (with gradient), ``old_target``
            (B, |Y^{t-1}|, H, W) float in [0, 1], ``q`` (B, |Y^t|, H, W) float in [0, 1] (both
            without gradient).
        Raises:
            ValueError: the old model's output has not |Y^{t-1}| channels.
        """
        if teacher is None:
            teacher = self.teacher(out["features"])
        size = batch["image"].shape[-2:]
        logits = F.interpolate(teacher["logits"].float(), size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            old_logits = self.context.old_model(batch["image"])["out"].float()  # (B, |Y^{t-1}|, H, W)
            if old_logits.shape[1] != self.context.num_old_channels:
                raise ValueError(
                    f"the old model has {old_logits.shape[1]} outputs, the step expects "
                    f"|Y^t-1| = {self.context.num_old_channels}"
                )
            old_target = old_class_targets(old_logits, batch["pasted"].long(), self.pasted_one_hot)  # Eq. 9
            if self.suppress_background:  # no background inside the fused masks of new objects
                pseudo = occlude_pseudo_labels(batch["pseudo"].float(), batch["pasted"].long())
                old_target[:, 0] = old_target[:, 0] * (1.0 - pseudo.amax(dim=1))
            labels = batch["labels"].float() if self.restrict_to_labels else None
            q = distillation_targets(logits, old_target, self.context.new_classes, self.alpha, self.beta, labels)
            if self.suppress_background:  # cf. WILSON Eq. 7: background ≤ 1 - the strongest new class
                q[:, 0] = torch.minimum(q[:, 0], 1.0 - q[:, self.context.new_classes].amax(dim=1))
        return {"teacher_logits": logits, "old_target": old_target, "q": q}

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        warmup = epoch < self.warmup_epochs
        pseudo, pasted, valid = self._inputs(batch)
        features = out["features"].detach() if warmup else out["features"]
        teacher = self.teacher(features)
        t = self.targets(batch, out, teacher)

        embedding = teacher["embedding"].float()  # (B, D, h, w), unit norm
        pixel_classes = contrastive_pixel_classes(pseudo, pasted, self.context.new_classes, valid)
        pixel_classes = F.interpolate(pixel_classes[:, None].float(), size=embedding.shape[-2:], mode="nearest-exact")[
            :, 0
        ].long()  # (B, h, w)
        index = sample_class_points(pixel_classes, self.points_per_class)
        points = embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])[index]
        dcl = dense_contrastive_loss(points, pixel_classes.flatten()[index], self.tau)  # Eq. 7

        new_bce = new_class_bce_loss(t["teacher_logits"], pseudo, self.context.new_classes, valid)  # Eq. 6
        old_bce = old_class_bce_loss(t["teacher_logits"], t["old_target"], valid)  # Eq. 8
        all_bce = (
            None if warmup else all_class_bce_loss(out["out"].float(), t["q"], valid, self.all_bce_reduction)
        )  # Eq. 11
        return overall_loss_terms(new_bce, dcl, old_bce, all_bce, self.lambda_dcl)  # Eq. 12
