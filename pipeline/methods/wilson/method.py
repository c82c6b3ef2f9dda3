"""WILSON (Cermelli et al., CVPR 2022): a localizer on the encoder learns the new classes from
image-level labels (nGWP + focal penalty, Eq. 1-3) and from the old model's localization prior
(Eq. 4); its soft pseudo-labels (Eq. 5-6), merged with the old model's outputs (Eq. 7), supervise
the segmentation model through a multi-label soft-margin loss (Eq. 8). After the warm-up the
localizer also learns from its own PAMR-refined masks (Sec. 4.3) and, as in the authors' published
command, the encoder is distilled towards the old one's features.

``pixel_labels`` (not WILSON's setting: FMWISS Table 9's "WILSON trained with pixel labels")
replaces the localizer's pseudo-labels by the ground truth; :func:`pixel_label_target`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from pipeline.data.classes import VOID
from pipeline.data.datasets import WithImageLabels, image_label_dataset, pixel_dataset
from pipeline.methods.base import OldModelMethod, StepContext, StepInputs
from pipeline.methods.registry import MethodSpec, register_method
from pipeline.methods.wilson.localizer import Localizer
from pipeline.methods.wilson.losses import (
    balanced_mask_cross_entropy,
    classification_loss,
    feature_distillation_loss,
    localization_prior_loss,
    pseudo_gt_mask,
    restrict_to_image_labels,
    segmentation_loss,
    soft_pseudo_labels,
    wilson_target,
)
from pipeline.methods.wilson.pamr import pamr_refine

#: ``pixel_labels`` values: None (the paper: image labels only), ``new``, ``seen``.
PIXEL_LABELS = (None, "new", "seen")


def pixel_label_target(gt: Tensor, old_logits: Tensor, new_classes: list[int], pixel_labels: str) -> Tensor:
    """WILSON's segmentation target (Eq. 7-8) from pixel labels instead of the localizer.

    FMWISS (Yu et al., CVPR 2023) Table 9 compares with "WILSON [8] trained with direct dense
    pixel-level labels (P) for all classes" (Sec. 4.5.7, "Data Efficiency Experiment"). The paper
    defines it no further; the P row's numbers (10-10: 69.5 / 56.4 / 64.2 disjoint, 73.6 / 57.6 /
    66.7 overlap) are those of WILSON's own Table 5, which are image-level labels of old *and* new
    classes (the relaxed setting), not pixel labels. Two precise readings, both built here:

    - ``seen`` ("P (all classes)", FMWISS's words): every pixel's target is the one-hot ground
      truth over the seen classes Y^t = background + old + new classes, on the step's images
      (the old model's outputs are not used in the target): q̂ = onehot(y);
    - ``new`` ("P (new classes)"): the ground-truth masks of the new classes replace the
      localizer's pseudo-labels q of Eq. 5-6 (one-hot, as q would be with a perfect localizer and
      α = 1), and Eq. 7 still takes the old classes from the old model and the background as
      min(σ(old)^b, q^b); old-class pixels are background in the ground truth (MiB's target), so
      there the background target is σ(old)^b.

    Everything else of WILSON is unchanged (the localizer still trains, on the image labels).
    Void pixels (255) get an all-zero target; the caller leaves them out of the loss.

    Args:
        gt: (B, H, W) int64 ground truth in the step's label space, 255 void: values 0, the new
            classes (``new``, MiB's target: old and future classes are 0) or any seen class
            (``seen``).
        old_logits: (B, |Y^{t-1}|, H, W) float logits of the old model at gt's resolution.
        new_classes: C^t, the last |Y^t| - |Y^{t-1}| channels.
        pixel_labels: ``new`` or ``seen``.
    Returns:
        (B, |Y^t|, H, W) float target q̂ in [0, 1] (Eq. 8's soft target; one-hot for ``seen``).
    Raises:
        ValueError: an unknown ``pixel_labels``, or a gt value outside what it allows.
    """
    if pixel_labels not in ("new", "seen"):
        raise ValueError(f"pixel_labels={pixel_labels!r}: expected 'new' or 'seen'")
    num_classes = old_logits.shape[1] + len(new_classes)
    allowed = [0, *new_classes] if pixel_labels == "new" else list(range(num_classes))
    bad = gt[~torch.isin(gt, torch.tensor([*allowed, VOID], device=gt.device))]
    if bad.numel():
        raise ValueError(
            f"ground-truth value {int(bad[0])} with pixel_labels={pixel_labels!r}: expected one of "
            f"{allowed if pixel_labels == 'new' else f'0..{num_classes - 1}'} or {VOID}"
        )
    valid = gt != VOID
    one_hot = F.one_hot(torch.where(valid, gt, 0), num_classes).permute(0, 3, 1, 2).float()
    one_hot = one_hot * valid[:, None].float()  # (B, |Y^t|, H, W)
    if pixel_labels == "seen":
        return one_hot
    return wilson_target(one_hot, old_logits.float(), new_classes)


@register_method("wilson")
class Wilson(OldModelMethod):
    """Objective of WILSON; the loop trains the localizer with the segmentation model.

    Schedule (Sec. 4.3): for the first ``warmup_epochs`` only the localizer learns (its input
    features are detached and no segmentation loss is computed, so the segmenter gets no
    gradient); then everything learns from ℓ_CLS + ℓ_LOC + ℓ_SEG, plus, each behind a setting:

    - ``self_sup`` (Sec. 4.3, "after the fifth epoch, we use the self-supervised segmentation loss
      on the localizer"; authors' ``train.py``): the localizer's softmax, refined by PAMR on the
      image resized to the localizer's resolution, masked by the image labels
      (``int_masks_soft[:, 1:] *= l1h``, always, whatever ``restrict_to_labels``), thresholded
      into a binary pseudo ground truth (``pseudo_gtmask``) that supervises the localizer's logits
      through a class-balanced cross-entropy (``balanced_mask_loss_ce``), weight 1, at the
      localizer's resolution; crop padding excluded (our choice);
    - ``feature_kd``: ``feature_kd_weight`` × MSE between the encoder features of the model and of
      the old model (authors' ``--loss_de 1``). The authors add it from the first epoch; here it
      starts with ℓ_SEG, since the warm-up keeps the segmenter frozen.

    With ``pseudo_labels_eval_mode`` the masks of Eq. 5-6 and of the self-supervision come from the
    localizer in eval mode (BN running statistics), without gradient, as the authors' code
    (``self.pseudolabeler.eval()`` … ``.train()``); otherwise from its training-mode output, detached.

    Args:
        context: the step and the frozen step t-1 model.
        in_channels: channels of the encoder features the localizer reads.
        warmup_epochs: localizer-only epochs (5 in the paper).
        alpha: hard/soft mix of the pseudo-labels (Eq. 6, 0.5).
        focal_lambda, focal_gamma: λ and γ of the focal penalty (Eq. 2; 0.01 and 3).
        ngwp_eps: ε of nGWP (Eq. 1).
        relaxed: Eq. 3 over every seen class instead of the new ones (WILSON Table 5); the batch
            labels must then hold all seen classes present.
        restrict_to_labels: before Eq. 5, zero the localizer's map of every object class the
            image is not labelled with, old classes included unless relaxed (authors' code, not in
            the paper).
        head_lr_mult: learning-rate multiplier of the head and the localizer (0.01 / 0.001 = 10).
        localizer_self_sup: add ``self_sup`` after the warm-up.
        pamr_iterations, pamr_dilations: PAMR of the self-supervision (0 iterations = no refinement,
            the authors' code without ``--affinity``).
        self_sup_cutoffs: (top, background, low) cutoffs of the binary pseudo ground truth
            (:func:`pseudo_gt_mask`).
        feature_kd_weight: weight of ``feature_kd`` (0 = off).
        pseudo_labels_eval_mode: masks from the localizer in eval mode.
        pixel_labels: None (the paper: image labels only); ``new`` or ``seen``: the segmentation
            target comes from the ground truth (:func:`pixel_label_target`, FMWISS Table 9's "P")
            and the data adapter adds ``gt`` (void and crop padding then leave the losses).
    Raises:
        ValueError: an unknown ``pixel_labels``.
    """

    classifier_init = "prior"  # sigmoid outputs (Eq. 7-8): new classes start at a low probability

    def __init__(
        self,
        context: StepContext,
        in_channels: int,
        warmup_epochs: int = 5,
        alpha: float = 0.5,
        focal_lambda: float = 0.01,
        focal_gamma: float = 3.0,
        ngwp_eps: float = 1.0,
        relaxed: bool = False,
        restrict_to_labels: bool = True,
        head_lr_mult: float = 10.0,
        localizer_self_sup: bool = True,
        pamr_iterations: int = 10,
        pamr_dilations: tuple[int, ...] = (1, 2, 4, 8, 12),
        self_sup_cutoffs: tuple[float, float, float] = (0.6, 0.7, 0.2),
        feature_kd_weight: float = 1.0,
        pseudo_labels_eval_mode: bool = True,
        pixel_labels: str | None = None,
    ):
        if pixel_labels not in PIXEL_LABELS:
            raise ValueError(f"wilson: pixel_labels={pixel_labels!r}, expected one of {PIXEL_LABELS}")
        self.pixel_labels, self.relaxed = pixel_labels, relaxed
        self.context = context
        self.localizer = Localizer(in_channels, context.num_classes)
        self.warmup_epochs, self.alpha = warmup_epochs, alpha
        self.focal = {"lam": focal_lambda, "gamma": focal_gamma, "eps": ngwp_eps}
        self.head_lr_mult, self.restrict_to_labels = head_lr_mult, restrict_to_labels
        self.cls_classes = list(range(1, context.num_classes)) if relaxed else list(context.new_classes)
        self.self_sup = localizer_self_sup
        self.pamr = {"iterations": pamr_iterations, "dilations": tuple(pamr_dilations)}
        top, bkg, low = self_sup_cutoffs
        self.cutoffs = {"cutoff_top": top, "cutoff_bkg": bkg, "cutoff_low": low}
        self.feature_kd_weight, self.eval_mode = feature_kd_weight, pseudo_labels_eval_mode

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], context: StepContext | None, model: nn.Module | None, spec: MethodSpec
    ) -> Wilson:
        """``model``: the segmenter, whose last encoder stage feeds the localizer."""
        return cls(
            context,
            model.backbone.feature_info.channels()[-1],
            cfg["warmup_epochs"],
            cfg["alpha"],
            cfg["focal_lambda"],
            cfg["focal_gamma"],
            cfg["ngwp_eps"],
            cfg["relaxed"],
            cfg["restrict_to_labels"],
            cfg["head_lr_mult"],
            cfg["localizer_self_sup"],
            cfg["pamr_iterations"],
            cfg["pamr_dilations"],
            (cfg["self_sup_cutoff_top"], cfg["self_sup_cutoff_bkg"], cfg["self_sup_cutoff_low"]),
            cfg["feature_kd_weight"],
            cfg["pseudo_labels_eval_mode"],
            cfg.get("pixel_labels"),  # absent in settings written before it existed: image labels
        ).bind(spec)

    def modules(self) -> dict[str, nn.Module]:
        return {"localizer": self.localizer}

    def dataset(self, inputs: StepInputs) -> Dataset:
        """Image-level labels only (``labels``, ``valid``): no pixel label reaches WILSON; with
        ``pixel_labels`` also ``gt`` (``new``: the new classes, others background; ``seen``: every
        seen class) and ``valid`` = not void.

        Raises:
            ValueError: the split's labels are not the ones this objective reads (relaxed or not,
                ``split["relaxed"]``), naming the task, step and both settings.
        """
        if bool(inputs.split.get("relaxed", False)) != self.relaxed:
            raise ValueError(
                f"wilson: split of {inputs.task} step {inputs.step} has relaxed={inputs.split.get('relaxed')} "
                f"labels, the objective relaxed={self.relaxed} (Eq. 3 over "
                f"{'every seen class' if self.relaxed else 'the new classes'}); train on the split of the "
                "method's relaxed_labels (pipeline.workflow.method_split)"
            )
        if self.pixel_labels is None:
            return image_label_dataset(inputs.data_index, inputs.split, inputs.train, inputs.num_classes)
        learned = "current" if self.pixel_labels == "new" else "seen"
        pixels = pixel_dataset(inputs.data_index, inputs.split["ids"], inputs.train, inputs.task, inputs.step, learned)
        return WithImageLabels(pixels, inputs.split["labels"], inputs.num_classes)

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        warmup = epoch < self.warmup_epochs
        features = out["features"].detach() if warmup else out["features"]
        scores = self.localizer(features).float()  # z: (B, |Y^t|, h, w)
        labels = batch["labels"].float()  # (B, |Y^t|) image-level labels
        with torch.no_grad():
            old = self.context.old_model(batch["image"])
        old_logits = old["out"].float()  # (B, |Y^t-1|, H, W)
        old_small = F.interpolate(old_logits, size=scores.shape[-2:], mode="bilinear", align_corners=False)
        losses = {
            "cls": classification_loss(scores, labels, self.cls_classes, **self.focal),
            "loc": localization_prior_loss(scores, old_small),
        }
        if warmup:
            return losses
        with torch.no_grad():
            plain = self._eval_scores(features) if self.eval_mode else scores.detach()  # z for the pseudo-labels
            if self.pixel_labels is not None:  # FMWISS Table 9's "P": the ground truth instead of the localizer
                if "gt" not in batch:
                    raise KeyError(f"wilson with pixel_labels={self.pixel_labels!r} needs batch['gt'] (its dataset())")
                target = pixel_label_target(batch["gt"], old_logits, self.context.new_classes, self.pixel_labels)
            else:
                target = self.pseudo_label_target(plain, labels, old_logits)
        return losses | self.student_losses(batch, out, old, target, scores, plain, labels)

    def pseudo_label_target(self, plain: Tensor, labels: Tensor, old_logits: Tensor) -> Tensor:
        """The segmentation target of WILSON Eq. 5-7 from the localizer's scores (no gradient).

        Args:
            plain: (B, |Y^t|, h, w) float localizer scores z.
            labels: (B, |Y^t|) float image-level labels in {0, 1}.
            old_logits: (B, |Y^t-1|, H, W) float logits of the step t-1 model.
        Returns:
            (B, |Y^t|, H, W) float target in [0, 1].
        """
        masks = F.interpolate(plain, size=old_logits.shape[-2:], mode="bilinear", align_corners=False).softmax(dim=1)
        if self.restrict_to_labels:  # before Eq. 5: the argmax picks background or a labelled class
            masks = restrict_to_image_labels(masks, labels)
        pseudo = soft_pseudo_labels(masks, self.alpha)  # Eq. 5-6
        return wilson_target(pseudo, old_logits, self.context.new_classes)  # Eq. 7

    def student_losses(
        self, batch: dict, out: dict, old: dict, target: Tensor, scores: Tensor, plain: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        """The segmenter's terms after the warm-up: ``seg`` (the BCE to ``target``), ``self_sup``
        (the localizer's PAMR self-supervision, when on) and ``feature_kd`` (MSE of the encoder
        features to the old model's, when weighted); ``out``/``old``: the current and the step
        t-1 model's outputs, ``scores``/``plain``: the localizer's scores with / without gradient."""
        losses = {"seg": segmentation_loss(out["out"].float(), target, valid=batch["valid"])}
        if self.self_sup:
            losses["self_sup"] = self._self_supervision(batch, scores, plain, labels)
        if self.feature_kd_weight > 0:
            losses["feature_kd"] = self.feature_kd_weight * feature_distillation_loss(
                out["features"].float(), old["features"].float()
            )
        return losses

    def _eval_scores(self, features: Tensor) -> Tensor:
        """z of the localizer in eval mode (BN running statistics), no gradient; its mode restored."""
        training = self.localizer.training
        self.localizer.eval()
        try:
            with torch.no_grad():
                return self.localizer(features).float()
        finally:
            self.localizer.train(training)

    def _self_supervision(self, batch: dict, scores: Tensor, plain: Tensor, labels: Tensor) -> Tensor:
        """Araslanov & Roth's self-supervised segmentation loss on the localizer (WILSON Sec. 4.3),
        at the localizer's resolution (h, w): ``scores`` are its logits (with gradient), ``plain``
        the logits the pseudo ground truth is made from (no gradient)."""
        size = scores.shape[-2:]
        with torch.no_grad():
            image = F.interpolate(batch["image"].float(), size=size, mode="bilinear", align_corners=True)
            refined = pamr_refine(image, plain.softmax(dim=1), **self.pamr)
            refined = restrict_to_image_labels(refined, labels)  # the authors' int_masks_soft[:, 1:] *= l1h
            pseudo_gt = pseudo_gt_mask(refined, **self.cutoffs)
            valid = F.interpolate(batch["valid"][:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        return balanced_mask_cross_entropy(scores, pseudo_gt, labels, valid=valid)
