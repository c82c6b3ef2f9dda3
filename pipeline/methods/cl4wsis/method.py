"""CL4WSIS (Hsieh et al., ICCV 2023): the step-0 objective and the two phases of a step t >= 1.

Each is an objective of the shared loop (:mod:`pipeline.train.loop`), run one after the other by
the ``train-instance`` stage (:mod:`pipeline.stages.train_instance`):

- :class:`InstanceBase` (step 0, Sec. 3: "fully pixel-wise annotations at the initial step"):
  per-class BCE of the semantic output against the ground truth (WILSON's step 0,
  :func:`pipeline.methods.pixel.losses.pixel_binary_cross_entropy`) + Panoptic-DeepLab's center
  L2 and offset L1 losses on the ground-truth instances (Eq. 5-6's forms with W = the instance
  pixels), weights 200 and 0.01 (Panoptic-DeepLab; the authors' ``center_loss_weight``,
  ``offset_loss_weight``);
- :class:`Phase1` (CL for WSSS, Sec. 3.1) on the semantic Segmenter: WILSON's objective
  (:class:`pipeline.methods.wilson.method.Wilson`: encoder L2 distillation, image-label BCE of the
  Decoder through nGWP + focal penalty, the Decoder's BCE distillation of old classes, the
  label-smoothed Decoder output merged with the old Segmenter's old classes as the Segmenter's
  BCE target, the Decoder's self-supervision after the warm-up) + the Peak Generator's image-label
  loss + FLAC (Eq. 1) + random dropout (Eq. 2-4, after the warm-up, as the authors);
- :class:`Phase2` (CL for WSIS, Sec. 3.2) on the instance branch alone (encoder and semantic head
  frozen, in eval mode): synthetic center/offset labels (:mod:`pipeline.methods.cl4wsis.synthetic`)
  for Eq. 5-6 and selective distillation of the old classes' centers and offsets from the step
  t-1 model (Eq. 7-8), each loss pair averaged (the authors' ``0.5 * ... + 0.5 * ...``) and
  weighted by 200 (center) and 0.01 (offset).

:class:`CL4WSIS` is the registered method: it builds the phases from ``methods.cl4wsis``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from pipeline.data.datasets import image_label_dataset
from pipeline.methods.base import Method, OldModelMethod, StepContext, StepInputs
from pipeline.methods.cl4wsis.data import InstanceTargets
from pipeline.methods.cl4wsis.losses import (
    augmentation_consistency_loss,
    center_distillation_loss,
    class_mean_probability,
    current_class_score,
    dropout_region,
    flip_view,
    offset_distillation_loss,
    old_class_weight,
    peak_generator_loss,
    random_dropout_loss,
    random_old_classes,
    rotate_view,
    weighted_center_loss,
    weighted_offset_loss,
)
from pipeline.methods.cl4wsis.modules import PeakGenerator
from pipeline.methods.cl4wsis.synthetic import class_peaks, normalised_peak_maps, synthetic_targets
from pipeline.methods.pixel.losses import pixel_binary_cross_entropy
from pipeline.methods.registry import MethodSpec, register_method
from pipeline.methods.wilson.losses import (
    classification_loss,
    localization_prior_loss,
    restrict_to_image_labels,
)
from pipeline.methods.wilson.method import Wilson
from pipeline.models.instance import InstanceSegmenter

#: The phases of a step t >= 1, in order (their run folders under the step's run folder).
PHASES = ("phase1", "phase2")


def _valid_at(valid: Tensor, size) -> Tensor:
    """(B, H, W) bool → (B, h, w) bool (nearest)."""
    return F.interpolate(valid[:, None].float(), size=tuple(size), mode="nearest")[:, 0] > 0.5


class InstanceBase(Method):
    """Step 0 of CL4WSIS: the Segmenter (semantic + instance branch) from pixel labels (module
    docstring). The data: :class:`pipeline.methods.cl4wsis.data.InstanceTargets`.

    Args:
        center_loss_weight, offset_loss_weight: λ of the center and offset losses.
        head_lr_mult: lr multiplier of the semantic head, classifier and instance branch.
        sigma: Gaussian of the center targets (px).
        center_weight: ``instances`` (authors) or ``all`` (Panoptic-DeepLab) pixels in the center loss.
    """

    name = "cl4wsis_base"

    def __init__(
        self,
        center_loss_weight: float = 200.0,
        offset_loss_weight: float = 0.01,
        head_lr_mult: float = 10.0,
        sigma: float = 6.0,
        center_weight: str = "instances",
    ):
        self.center_loss_weight, self.offset_loss_weight = center_loss_weight, offset_loss_weight
        self.head_lr_mult, self.sigma, self.center_weight = head_lr_mult, sigma, center_weight

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], context: StepContext | None, model: nn.Module | None, spec: MethodSpec | None = None
    ) -> InstanceBase:
        """From ``methods.cl4wsis`` (``schedule.base.head_lr_mult`` and the loss settings)."""
        return cls(
            cfg["center_loss_weight"],
            cfg["offset_loss_weight"],
            cfg["schedule"]["base"]["head_lr_mult"],
            cfg["sigma"],
            cfg["base_center_weight"],
        )

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """The encoder at ``lr``; the semantic head, classifier and instance branch (the paper's
        "Segmenter") at ``lr * head_lr_mult``."""
        head = [*model.head.parameters(), *model.classifier.parameters(), *model.instance.parameters()]
        return [{"params": list(model.backbone.parameters()), "lr": lr}, {"params": head, "lr": lr * self.head_lr_mult}]

    def dataset(self, inputs: StepInputs) -> Dataset:
        return InstanceTargets(
            inputs.data_index,
            inputs.split["ids"],
            inputs.train,
            inputs.task,
            inputs.step,
            self.sigma,
            self.center_weight,
        )

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        return {
            "seg": pixel_binary_cross_entropy(out["out"].float(), batch["gt"]),
            "center": self.center_loss_weight
            * weighted_center_loss(out["center"].float(), batch["center"], batch["center_weight"]),
            "offset": self.offset_loss_weight
            * weighted_offset_loss(out["offset"].float(), batch["offset"], batch["offset_weight"]),
        }


class Phase1(Wilson):
    """CL4WSIS Phase 1 on the semantic Segmenter (module docstring): WILSON + PG + FLAC + random dropout.

    The model the loop trains is the :class:`~pipeline.models.segmenter.Segmenter` (the instance
    branch is not trained: Sec. 4.3 "w/o instance branch"); ``context.old_model`` is the step t-1
    Segmenter. WILSON's settings are WILSON's (``**wilson``: every keyword of
    :class:`~pipeline.methods.wilson.method.Wilson` but ``pixel_labels``).

    Args:
        context, in_channels: as WILSON's.
        peak_gamma: γ of the Peak Generator (0.7).
        peak_focal: the PG's aggregator with the focal penalty (paper) or without (authors).
        flac: add Eq. 1; flac_weight its weight; flac_classes ``new`` (authors) or ``all``
            (paper); flac_average ``logit`` (authors) or ``probability`` (paper).
        random_dropout: add Eq. 4 after the warm-up; random_dropout_weight its weight.
    """

    name = "cl4wsis_phase1"

    def __init__(
        self,
        context: StepContext,
        in_channels: int,
        peak_gamma: float = 0.7,
        peak_focal: bool = False,
        flac: bool = True,
        flac_weight: float = 1.0,
        flac_classes: str = "new",
        flac_average: str = "logit",
        random_dropout: bool = True,
        random_dropout_weight: float = 1.0,
        **wilson: Any,
    ):
        if flac_classes not in ("new", "all"):
            raise ValueError(f"cl4wsis: flac_classes={flac_classes!r}, expected 'new' or 'all'")
        super().__init__(context, in_channels, **wilson)
        self.peak_generator = PeakGenerator(len(context.new_classes), peak_gamma)
        self.peak_focal = peak_focal
        self.flac, self.flac_weight, self.flac_average = flac, flac_weight, flac_average
        self.flac_channels = list(context.new_classes) if flac_classes == "new" else list(range(context.num_classes))
        self.random_dropout, self.random_dropout_weight = random_dropout, random_dropout_weight

    @property
    def decoder(self) -> nn.Module:
        """The Decoder (WILSON's localizer)."""
        return self.localizer

    def modules(self) -> dict[str, nn.Module]:
        return {"decoder": self.localizer, "peak_generator": self.peak_generator}

    def _decode(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        """The Decoder's logits z on the features and, with FLAC, Eq. 1 over the flipped and the
        randomly rotated (90°, 180° or 270°, torch's seeded RNG) features, one Decoder pass over
        the three views when the map is square (the authors' ``torch.cat``)."""
        if not self.flac:
            return self.localizer(features).float(), None
        turns = int(torch.randint(1, 4, ()).item())
        flipped, rotated = flip_view(features), rotate_view(features, turns)
        if features.shape[-1] == features.shape[-2]:
            scores, scores_flip, scores_rot = self.localizer(torch.cat([features, flipped, rotated])).float().chunk(3)
        else:
            scores, scores_flip, scores_rot = (self.localizer(f).float() for f in (features, flipped, rotated))
        mean = class_mean_probability(scores, self.flac_channels, self.flac_average)
        mean_flip = flip_view(class_mean_probability(scores_flip, self.flac_channels, self.flac_average))
        mean_rot = rotate_view(class_mean_probability(scores_rot, self.flac_channels, self.flac_average), -turns)
        return scores, augmentation_consistency_loss(mean, mean_flip, mean_rot)

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        warmup = epoch < self.warmup_epochs
        features = out["features"].detach() if warmup else out["features"]
        scores, flac = self._decode(features)  # z: (B, |Y^t|, h, w)
        labels = batch["labels"].float()
        new = self.context.new_classes
        with torch.no_grad():
            old = self.context.old_model(batch["image"])
        old_logits = old["out"].float()
        old_small = F.interpolate(old_logits, size=scores.shape[-2:], mode="bilinear", align_corners=False)
        losses = {
            "cls": classification_loss(scores, labels, self.cls_classes, **self.focal),
            "loc": localization_prior_loss(scores, old_small),
            "peak": peak_generator_loss(
                self.peak_generator(scores), labels[:, new], self.peak_focal, self.focal["lam"], self.focal["gamma"]
            ),
        }
        if flac is not None:
            losses["flac"] = self.flac_weight * flac
        if warmup:
            return losses
        with torch.no_grad():
            plain = self._eval_scores(features) if self.eval_mode else scores.detach()
            target = self.pseudo_label_target(plain, labels, old_logits)  # WILSON Eq. 5-7
        losses |= self.student_losses(batch, out, old, target, scores, plain, labels)
        if self.random_dropout:
            with torch.no_grad():  # P from the label-masked sigmoid of the eval-mode Decoder (authors')
                reference = restrict_to_image_labels(torch.sigmoid(plain), labels)
                region = dropout_region(current_class_score(reference, new), probability=True)
                region &= _valid_at(batch["valid"], region.shape[-2:])
                targets = random_old_classes(region.shape, self.context.num_old_channels, device=region.device)
            losses["random_dropout"] = self.random_dropout_weight * random_dropout_loss(scores, region, targets)
        return losses


class Phase2(OldModelMethod):
    """CL4WSIS Phase 2 on the instance branch alone (module docstring).

    Per batch, without gradient: the semantic map S = argmax of the Phase-1 Segmenter's softmax
    (flip-averaged logits with ``flip_semantic``, the current classes masked by the image labels:
    the authors' ``outputs_seg_max``, ``soft_seg_gt``), W^old from S, the Peak Generator's peaks
    from the Phase-1 Decoder on the current features (both frozen, eval mode), the synthetic
    labels of the labelled current classes on S with the old classes set to background, and the
    step t-1 model's center and offset maps. Crop padding gets weight 0.

    Args:
        context: the step; ``context.old_model`` is the step t-1 :class:`InstanceSegmenter`.
        model: the :class:`InstanceSegmenter` being trained (its semantic part frozen).
        decoder, peak_generator: the Phase-1 modules (frozen here).
        sigma, peak_threshold, peak_kernel, peak_top_k, min_area, self_refinement,
            refine_magnitude, refine_max_instances: :func:`pipeline.methods.cl4wsis.synthetic.synthetic_targets`
            and :func:`~pipeline.methods.cl4wsis.synthetic.class_peaks`.
        selective_distillation: add Eq. 7-8.
        center_loss_weight, offset_loss_weight: λ of the center and offset terms.
        flip_semantic: S from the mean of the logits of the image and of its flip.
    Raises:
        TypeError: ``model`` or the old model is not an :class:`InstanceSegmenter`.
    """

    name = "cl4wsis_phase2"

    def __init__(
        self,
        context: StepContext,
        model: InstanceSegmenter,
        decoder: nn.Module,
        peak_generator: nn.Module,
        sigma: float = 6.0,
        peak_threshold: float = 0.7,
        peak_kernel: int = 15,
        peak_top_k: int = 25,
        min_area: int = 20,
        self_refinement: bool = True,
        refine_magnitude: float = 2.5,
        refine_max_instances: int = 5,
        selective_distillation: bool = True,
        center_loss_weight: float = 200.0,
        offset_loss_weight: float = 0.01,
        flip_semantic: bool = True,
    ):
        for what, m in (("model", model), ("old model", context.old_model)):
            if not isinstance(m, InstanceSegmenter):
                raise TypeError(f"cl4wsis phase 2: the {what} must be an InstanceSegmenter, got {type(m).__name__}")
        self.context, self.model = context, model
        self.decoder, self.peak_generator = decoder, peak_generator
        for module in (decoder, peak_generator):
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self.sigma = sigma
        self.peaks = {"threshold": peak_threshold, "kernel": peak_kernel, "top_k": peak_top_k}
        self.synthetic = {
            "sigma": sigma,
            "min_area": min_area,
            "refine": self_refinement,
            "magnitude_threshold": refine_magnitude,
            "max_instances": refine_max_instances,
        }
        self.selective_distillation = selective_distillation
        self.center_loss_weight, self.offset_loss_weight = center_loss_weight, offset_loss_weight
        self.flip_semantic = flip_semantic
        self.old_object_classes = list(range(1, context.num_old_channels))

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """The instance branch alone (Sec. 4.3: "then only train the instance branch")."""
        return [{"params": list(model.instance.parameters()), "lr": lr}]

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        super().on_epoch_start(epoch, model)
        model.freeze_semantic(True)
        device = next(model.instance.parameters()).device
        for module in (self.decoder, self.peak_generator):
            module.to(device).eval()

    @torch.no_grad()
    def semantic_probabilities(self, image: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        """(B, C, H, W) softmax of the Segmenter's (flip-averaged) logits, current classes times the
        image labels (the authors' ``soft_seg_gt``)."""
        logits = logits.float()
        if self.flip_semantic:
            flipped = self.model.segmenter(flip_view(image))["out"].float()
            logits = (logits + flip_view(flipped)) / 2
        probs = logits.softmax(dim=1)
        new = self.context.new_classes
        probs[:, new] *= labels[:, new, None, None]
        return probs

    @torch.no_grad()
    def synthetic_labels(self, batch: dict, out: dict[str, Tensor], probs: Tensor) -> dict[str, Tensor]:
        """C^syn, O^syn, W^syn of the batch (B, 1|2|1, H, W) on the batch's device."""
        image, labels = batch["image"], batch["labels"].float()
        new = self.context.new_classes
        scores = self.decoder(out["features"].float())
        peak_maps = normalised_peak_maps(self.peak_generator(scores), labels[:, new], image.shape[-2:])
        semantic = probs.argmax(dim=1)
        semantic = torch.where(semantic < self.context.num_old_channels, torch.zeros_like(semantic), semantic)
        semantic = torch.where(batch["valid"], semantic, torch.zeros_like(semantic))
        rows = []
        for b in range(image.shape[0]):
            present = [c for c in new if labels[b, c] > 0]
            found = class_peaks(peak_maps[b], **self.peaks)
            peaks = {c: found[k].cpu().numpy() for k, c in enumerate(new) if c in present}
            rows.append(
                synthetic_targets(
                    semantic[b].cpu().numpy(),
                    probs[b].cpu(),
                    peaks,
                    present,
                    out["center"][b],
                    out["offset"][b],
                    **self.synthetic,
                )
            )
        device = image.device
        return {key: torch.stack([row[key] for row in rows]).to(device) for key in ("center", "offset", "weight")}

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        image, labels = batch["image"], batch["labels"].float()
        probs = self.semantic_probabilities(image, out["out"], labels)
        syn = self.synthetic_labels(batch, out, probs)
        valid = batch["valid"][:, None].float()
        center, offset = out["center"].float(), out["offset"].float()
        losses = {
            "center_syn": 0.5
            * self.center_loss_weight
            * weighted_center_loss(center, syn["center"], syn["weight"] * valid),
            "offset_syn": 0.5
            * self.offset_loss_weight
            * weighted_offset_loss(offset, syn["offset"], syn["weight"] * valid),
        }
        if self.selective_distillation:
            with torch.no_grad():
                old = self.context.old_model(image)
                weight_old = old_class_weight(probs.argmax(dim=1), self.old_object_classes) * valid
            losses["center_dist"] = (
                0.5 * self.center_loss_weight * center_distillation_loss(center, old["center"].float(), weight_old)
            )
            losses["offset_dist"] = (
                0.5 * self.offset_loss_weight * offset_distillation_loss(offset, old["offset"].float(), weight_old)
            )
        return losses


#: Phase-1 keys of ``methods.cl4wsis`` that are WILSON's settings (passed to :class:`Wilson`).
WILSON_KEYS = (
    "warmup_epochs",
    "alpha",
    "focal_lambda",
    "focal_gamma",
    "ngwp_eps",
    "restrict_to_labels",
    "localizer_self_sup",
    "pamr_iterations",
    "pamr_dilations",
    "feature_kd_weight",
    "pseudo_labels_eval_mode",
)


@register_method("cl4wsis")
class CL4WSIS(Method):
    """The registered method: its settings, its data, and the two phases' objectives.

    A step of CL4WSIS is two loop runs (``phase1()``, then ``phase2(phase1)``), which the
    ``train-instance`` stage runs; this object itself is not trained (:meth:`losses` raises).

    Args:
        cfg: ``methods.cl4wsis`` (complete, validated).
        context: the step; ``context.old_model`` the step t-1 :class:`InstanceSegmenter`.
        model: the :class:`InstanceSegmenter` being trained.
    Raises:
        TypeError: ``model`` is not an :class:`InstanceSegmenter` (a semantic ``train-step`` run).
    """

    classifier_init = "prior"  # sigmoid outputs (WILSON Eq. 7-8)

    def __init__(self, cfg: dict[str, Any], context: StepContext, model: nn.Module):
        if not isinstance(model, InstanceSegmenter):
            raise TypeError(
                f"cl4wsis needs a model with the instance branch (InstanceSegmenter), got {type(model).__name__}: "
                "it trains through the train-instance stage (rules/instance.smk), not train-step"
            )
        self.cfg, self.context, self.model = dict(cfg), context, model
        self.relaxed = bool(cfg.get("relaxed", False))
        self.head_lr_mult = float(cfg["schedule"]["phase1"]["head_lr_mult"])

    @classmethod
    def from_config(
        cls, cfg: dict[str, Any], context: StepContext | None, model: nn.Module | None, spec: MethodSpec
    ) -> CL4WSIS:
        return cls(cfg, context, model).bind(spec)

    def phase1(self) -> Phase1:
        """Phase 1's objective; the loop trains ``model.segmenter`` with it."""
        cfg = self.cfg
        context = dataclasses.replace(self.context, old_model=self.context.old_model.segmenter)
        wilson = {key: cfg[key] for key in WILSON_KEYS}
        wilson["pamr_dilations"] = tuple(wilson["pamr_dilations"])
        return Phase1(
            context,
            self.model.backbone.feature_info.channels()[-1],
            peak_gamma=cfg["peak_gamma"],
            peak_focal=cfg["peak_focal_penalty"],
            flac=cfg["flac"],
            flac_weight=cfg["flac_weight"],
            flac_classes=cfg["flac_classes"],
            flac_average=cfg["flac_average"],
            random_dropout=cfg["random_dropout"],
            random_dropout_weight=cfg["random_dropout_weight"],
            relaxed=self.relaxed,
            head_lr_mult=self.head_lr_mult,
            self_sup_cutoffs=(cfg["self_sup_cutoff_top"], cfg["self_sup_cutoff_bkg"], cfg["self_sup_cutoff_low"]),
            **wilson,
        )

    def phase2(self, phase1: Phase1) -> Phase2:
        """Phase 2's objective, with the Decoder and Peak Generator Phase 1 trained."""
        cfg = self.cfg
        return Phase2(
            self.context,
            self.model,
            phase1.decoder,
            phase1.peak_generator,
            sigma=cfg["sigma"],
            peak_threshold=cfg["peak_threshold"],
            peak_kernel=cfg["peak_kernel"],
            peak_top_k=cfg["peak_top_k"],
            min_area=cfg["min_area"],
            self_refinement=cfg["self_refinement"],
            refine_magnitude=cfg["refine_magnitude"],
            refine_max_instances=cfg["refine_max_instances"],
            selective_distillation=cfg["selective_distillation"],
            center_loss_weight=cfg["center_loss_weight"],
            offset_loss_weight=cfg["offset_loss_weight"],
            flip_semantic=cfg["flip_semantic"],
        )

    def dataset(self, inputs: StepInputs) -> Dataset:
        """Both phases read image-level labels only (``labels``, ``valid``: WILSON's adapter).

        Raises:
            ValueError: the split's labels are relaxed and the method's not, or the reverse.
        """
        if bool(inputs.split.get("relaxed", False)) != self.relaxed:
            raise ValueError(
                f"cl4wsis: split of {inputs.task} step {inputs.step} has relaxed={inputs.split.get('relaxed')} labels, "
                f"the method relaxed={self.relaxed}; train on the split of the method's relaxed_labels"
            )
        return image_label_dataset(inputs.data_index, inputs.split, inputs.train, inputs.num_classes)

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        """Not trained directly.

        Raises:
            NotImplementedError: always; train ``phase1()`` then ``phase2(phase1)``.
        """
        raise NotImplementedError("cl4wsis trains in two phases: run phase1(), then phase2(phase1) (train-instance)")


__all__ = ["CL4WSIS", "PHASES", "WILSON_KEYS", "InstanceBase", "Phase1", "Phase2"]
