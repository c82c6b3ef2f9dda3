"""The offline WSSS baselines as objectives of the shared training loop (:mod:`pipeline.train.loop`).

Each objective reads the batch's ``labels`` (B, K) multi-hot over the step's new classes (channel
k = ``new_classes[k]``) and the network's output dict (:mod:`pipeline.wsss.networks`); the loop owns
the device, AMP, optimiser, schedule and checkpoints.

- ``cam``: multi-label soft-margin loss on the GAP logits (EPS' ``train_cls``; VWE Eq. 8 form).
- ``vwe``: the three soft-margin terms of VWE Eq. 9.
- ``iscam``: ISCAM Eq. 5 (max-pool and importance-sampled BCE) + the feature similarity loss
  Eq. 6 (its σ, μ module is the objective's, checkpointed by the loop and trained if learned).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pipeline.objective import Objective
from pipeline.wsss.iscam import (
    FeatureSimilarity,
    binary_cross_entropy,
    classification_loss,
    importance_sample,
    max_pool_prediction,
    sampled_prediction,
)
from pipeline.wsss.vwe import multilabel_soft_margin_loss, vwe_loss


def cam_param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
    """SGD groups: backbone at ``lr``, layers trained from scratch at ``lr * head_lr_mult``
    (10× in IRNet/VWE, PSA/EPS and ISCAM code). Frozen parameters (fixed BN) are left out."""
    new = [p for p in model.new_parameters() if p.requires_grad]
    new_ids = {id(p) for p in new}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in new_ids]
    return [{"params": backbone, "lr": lr}, {"params": new, "lr": lr * head_lr_mult}]


def rgb_at(image: Tensor, size: tuple[int, int]) -> Tensor:
    """ImageNet-normalised (B, 3, H, W) batch → RGB in [0, 1] averaged over the cells of a
    ``size`` grid (the CAM map's pixels): (B, 3, h, w) float, no gradient."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(1, 3, 1, 1)
    rgb = (image.detach().float() * std + mean).clamp(0.0, 1.0)
    return F.adaptive_avg_pool2d(rgb, size)


class CamObjective(Objective):
    """CAM baseline: L = MultiLabelSoftMargin(logits, labels)."""

    name = "cam"

    def __init__(self, head_lr_mult: float = 10.0):
        self.head_lr_mult = head_lr_mult

    @classmethod
    def from_config(cls, cfg: dict, head_lr_mult: float) -> CamObjective:
        """From the network's section ``wsss.<name>`` (unused by CAM and VWE) and the head lr."""
        return cls(head_lr_mult)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        return cam_param_groups(model, lr, self.head_lr_mult)

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        return {"cls": multilabel_soft_margin_loss(out["logits"], batch["labels"])}


class VweObjective(CamObjective):
    """VWE (Ru et al. IJCAI 2021, Eq. 9): image, visual-word and word-to-image soft-margin terms."""

    name = "vwe"

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        return vwe_loss(out["logits"], batch["labels"], out["word_logits"], out["word_labels"], out["w2i_logits"])


class IsCamObjective(CamObjective):
    """ISCAM (Jonnarth and Felsberg, ICASSP 2022): L = L_cls (Eq. 5) + w · L_fs (Eq. 6).

    Both terms of Eq. 5 run over all 1 + K channels, the background labelled present in every
    image (Eq. 3 sums over "K classes including background"; the authors' code gives the
    background label 1). The authors' code leaves the background out of the sampled term but
    keeps it, at weight 1 whatever λ, in a max-pooling term on SEAM's revised CAMs, which is not
    part of this baseline; without any background term and λ = 1 nothing stops a present class
    from covering the whole image (zero loss; docs/lab-notes.md, IS-CAM). The
    feature similarity loss is computed in float32 (AMP off) on the CAM map's grid against the
    image's RGB averaged over each cell.

    Args:
        lam: λ of Eq. 5 (1 in the paper's experiments, Sec. 4.2).
        num_samples: pixels drawn per class and image (the paper: one; the authors' code: 100).
        fs_weight: weight of L_fs. The paper gives none; with Eq. 6's (HW)^-2 the term is
            negligible (~1e-6 on a 56×56 map), so weight and normalisation are taken together
            from the authors' code: 0.5 × (1/HW) sum_ij w_ij ||a_i - a_j||² f_ij, which is
            ``fs_weight = 1`` with ``normalisation = "pixels"`` and the paper's g = ½||·||².
        sigma, mu: σ (CAM-map pixels) and μ, initial values if learned (authors' code: 5 and 2.5).
        learn_sigma_mu: learn σ and μ by gradient descent on the loss (paper Sec. 3.3) or keep
            them fixed (authors' code, the default here): ∂L_fs/∂μ = -(1/N) Σ w g (1 - f²) ≤ 0, so
            descent raises μ without bound, every pair becomes "dissimilar" and the loss rewards
            neighbouring pixels with different predictions (docs/lab-notes.md, IS-CAM).
        normalisation: ``pairs`` (Eq. 6 as printed) or ``pixels`` (authors' code), see
            :func:`pipeline.wsss.iscam.feature_similarity_loss`.
        head_lr_mult: learning-rate multiplier of the classifier (and of σ, μ when learned).
    """

    name = "iscam"

    def __init__(
        self,
        lam: float = 1.0,
        num_samples: int = 1,
        fs_weight: float = 1.0,
        sigma: float = 5.0,
        mu: float = 2.5,
        learn_sigma_mu: bool = False,
        normalisation: str = "pixels",
        head_lr_mult: float = 10.0,
    ):
        super().__init__(head_lr_mult)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"wsss.iscam.lambda_is={lam}: must lie in [0, 1]")
        self.lam, self.num_samples, self.fs_weight = lam, num_samples, fs_weight
        self.similarity = FeatureSimilarity(sigma, mu, learn_sigma_mu, normalisation)

    @classmethod
    def from_config(cls, cfg: dict, head_lr_mult: float) -> IsCamObjective:
        return cls(
            float(cfg["lambda_is"]),
            int(cfg["num_samples"]),
            float(cfg["fs_weight"]),
            float(cfg["sigma_init"]),
            float(cfg["mu_init"]),
            bool(cfg["learn_sigma_mu"]),
            str(cfg["fs_normalisation"]),
            head_lr_mult,
        )

    def modules(self) -> dict[str, nn.Module]:
        return {"feature_similarity": self.similarity}

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        groups = cam_param_groups(model, lr, self.head_lr_mult)
        learned = [p for p in self.similarity.parameters() if p.requires_grad]
        if learned:  # no weight decay: it would pull log σ and μ towards 0
            groups.append({"params": learned, "lr": lr * self.head_lr_mult, "weight_decay": 0.0})
        return groups

    def losses(self, batch: dict, out: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        probs = out["probs"].float()
        labels = batch["labels"].float()
        target = torch.cat([labels.new_ones((labels.shape[0], 1)), labels], dim=1)
        max_loss = binary_cross_entropy(max_pool_prediction(probs), target)
        sampled = sampled_prediction(probs, importance_sample(probs, self.num_samples))
        sampled_loss = binary_cross_entropy(sampled, target)
        losses = {"cls": classification_loss(max_loss, sampled_loss, self.lam)}
        if self.fs_weight:
            with torch.autocast(device_type=probs.device.type, enabled=False):
                rgb = rgb_at(batch["image"], tuple(probs.shape[-2:]))
                losses["fs"] = self.fs_weight * self.similarity(probs, rgb)
        return losses

    def learned(self) -> dict:
        return {"sigma": float(self.similarity.sigma.detach()), "mu": float(self.similarity.mu.detach())}


#: The objective that trains each CAM network of :data:`pipeline.wsss.networks.CAM_NETWORKS`.
CAM_OBJECTIVES: dict[str, type[CamObjective]] = {"cam": CamObjective, "vwe": VweObjective, "iscam": IsCamObjective}


def build_cam_objective(name: str, cfg: dict, train: dict) -> CamObjective:
    """The objective of baseline ``name`` from its config section ``wsss.<name>`` and the training
    section (``head_lr_mult``).

    Raises:
        ValueError: unknown name or missing key (named).
    """
    if name not in CAM_OBJECTIVES:
        raise ValueError(f"unknown CAM baseline {name!r}; known: {', '.join(CAM_OBJECTIVES)}")
    try:
        return CAM_OBJECTIVES[name].from_config(cfg, float(train["head_lr_mult"]))
    except KeyError as err:
        section = "train_cam" if err.args[0] == "head_lr_mult" else "wsss"
        raise ValueError(f"{section}.{name}: missing key {err.args[0]!r}") from err


__all__ = [
    "CAM_OBJECTIVES",
    "CamObjective",
    "IsCamObjective",
    "VweObjective",
    "build_cam_objective",
    "cam_param_groups",
    "rgb_at",
]
