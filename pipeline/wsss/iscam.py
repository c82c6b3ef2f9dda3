"""Importance-sampling CAMs (Jonnarth and Felsberg, "Importance Sampling CAMs for Weakly-Supervised
Segmentation", ICASSP 2022, Sec. 3), one function per equation.

Notation (paper Sec. 3.1): ``s`` (B, C, h, w) are the CAM network's pixel logits over C = 1 + K
channels (channel 0 background, then the K classes learned at this step), ``a = softmax(s)`` the
CAMs (Eq. 1), ``y`` (B, C) the image labels with the background always present (y_0 = 1, the
authors' code). Pixels are indexed in row-major order i = row * w + col when flattened.

Data flow of one training batch (:class:`pipeline.wsss.objectives.IsCamObjective` composes these):

- ``a`` → ``max_pool_prediction`` (Eq. 2) → ``binary_cross_entropy`` (Eq. 3);
- ``a`` → ``importance_sample`` + ``sampled_prediction`` (Eq. 4) → ``binary_cross_entropy``;
- both → ``classification_loss`` (Eq. 5, weight λ);
- ``a`` and the RGB image → ``feature_similarity_loss`` (Eq. 6, from ``spatial_weights`` Eq. 7,
  ``rgb_dissimilarity`` δ, ``dissimilarity_response`` Eq. 8 and ``prediction_gap`` g), with σ and
  μ as parameters (:class:`FeatureSimilarity`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _check_maps(name: str, x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")


# --- Sec. 3.1: CAMs and max pooling -------------------------------------------------------------


def cam_probabilities(scores: Tensor) -> Tensor:
    """CAMs as per-pixel class probabilities a = softmax(s) over the channels (ISCAM Eq. 1).

    Args:
        scores: (B, C, h, w) float logits s, C = 1 (background) + K.
    Returns:
        (B, C, h, w) float a in (0, 1), summing to 1 over dim 1.
    """
    _check_maps("scores", scores)
    return scores.float().softmax(dim=1)


def max_pool_prediction(probs: Tensor) -> Tensor:
    """Image-level prediction ŷ_k = max_ij a_ijk, "one pixel suffices" (ISCAM Eq. 2).

    Args:
        probs: (B, C, h, w) CAMs a.
    Returns:
        (B, C) float in [0, 1].
    """
    _check_maps("probs", probs)
    return probs.amax(dim=(2, 3))


def squeeze_probability(pred: Tensor, eps: float = 1e-3) -> Tensor:
    """The authors' affine squeeze of probabilities before a log (arvijj/icam):
    ŷ' = (eps + (1 - eps) ŷ) / (1 + eps), mapping [0, 1] onto [eps / (1 + eps), 1 / (1 + eps)]
    (smooth, never a zero gradient). ``eps = 0`` is the identity.

    Args:
        pred: float probabilities in [0, 1], any shape.
        eps: ≥ 0.
    Returns:
        ŷ' of ``pred``'s shape and dtype.
    """
    return (eps + (1.0 - eps) * pred) / (1.0 + eps)


def binary_cross_entropy(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """Mean binary cross-entropy of probabilities (ISCAM Eq. 3), averaged over classes (1/K),
    samples and batch.

    L = -1/K sum_k [y_k log ŷ_k + (1 - y_k) log(1 - ŷ_k)]. To keep the log finite, ŷ is first
    squeezed as the authors' code does (:func:`squeeze_probability`, eps = 1e-3). ``eps = 0`` is
    the equation as printed.

    Args:
        pred: (B, C) or (B, C, S) float probabilities in [0, 1] (S samples per class, Eq. 4).
        target: (B, C) float labels y in {0, 1}, broadcast over the samples.
        eps: 0 ≤ eps < 0.5.
    Returns:
        scalar float ≥ 0.
    Raises:
        ValueError: shapes that do not match, or eps out of range.
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps={eps}: expected 0 <= eps < 0.5")
    if target.dim() != 2 or pred.shape[:2] != target.shape or pred.dim() not in (2, 3):
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)}: expected (B, C[, S]) and (B, C)")
    pred, target = pred.float(), target.float()
    if pred.dim() == 3:
        target = target.unsqueeze(-1).expand_as(pred)
    pred = squeeze_probability(pred, eps)
    return -(target * torch.log(pred) + (1.0 - target) * torch.log1p(-pred)).mean()


# --- Sec. 3.2: importance sampling --------------------------------------------------------------


def importance_sample(probs: Tensor, num_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Draw pixel positions from each class's probability mass function (ISCAM Eq. 4).

    p_k(i, j | x) = a_ijk / Z_k(a), Z_k = sum_ij a_ijk: one categorical distribution over the h·w
    pixels per image and class, sampled with replacement. Sampling is not differentiable (the
    positions carry no gradient; the prediction read there does, :func:`sampled_prediction`). A
    class whose map is zero everywhere (float underflow) is sampled uniformly.

    Args:
        probs: (B, C, h, w) CAMs a ≥ 0.
        num_samples: S ≥ 1 positions per image and class (the paper: one).
        generator: optional torch generator (on the device of ``probs``) for reproducible draws.
    Returns:
        (B, C, S) int64 flat pixel indices in [0, h·w), row-major.
    Raises:
        ValueError: S < 1 or negative probabilities.
    """
    _check_maps("probs", probs)
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: must be >= 1")
    batch, channels, height, width = probs.shape
    weights = probs.detach().float().reshape(batch * channels, height * width)
    if bool((weights < 0).any()):
        raise ValueError("importance_sample: the CAMs hold negative values; expected probabilities")
    empty = weights.sum(dim=1, keepdim=True) <= 0
    weights = torch.where(empty, torch.ones_like(weights), weights)
    index = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    return index.reshape(batch, channels, num_samples)


def sampled_prediction(probs: Tensor, index: Tensor) -> Tensor:
    """Stochastic image-level predictions ỹ_k = a_ijk at the sampled (i, j) ~ p_k (ISCAM Eq. 4).

    Args:
        probs: (B, C, h, w) CAMs a.
        index: (B, C, S) int64 flat pixel indices from :func:`importance_sample`.
    Returns:
        (B, C, S) float in [0, 1], differentiable with respect to ``probs``.
    """
    _check_maps("probs", probs)
    if index.dim() != 3 or index.shape[:2] != probs.shape[:2]:
        raise ValueError(f"index {tuple(index.shape)}: expected (B, C, S) with (B, C) = {tuple(probs.shape[:2])}")
    return probs.flatten(2).gather(2, index)


def classification_loss(max_pool_loss: Tensor, sampled_loss: Tensor, lam: float = 1.0) -> Tensor:
    """Convex combination of the max-pooling and importance-sampling terms (ISCAM Eq. 5).

    L_cls = (1 - λ) L_ce(y, ŷ) + λ L_ce(y, ỹ); λ = 1 in the paper's experiments (Sec. 4.2).

    Args:
        max_pool_loss: scalar L_ce(y, ŷ) (Eq. 3 on Eq. 2).
        sampled_loss: scalar L_ce(y, ỹ) (Eq. 3 on Eq. 4).
        lam: λ in [0, 1].
    Returns:
        scalar float.
    Raises:
        ValueError: λ outside [0, 1].
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda={lam}: must lie in [0, 1]")
    return (1.0 - lam) * max_pool_loss + lam * sampled_loss


# --- Sec. 3.3: feature similarity loss ----------------------------------------------------------


def spatial_weights(height: int, width: int, sigma: Tensor | float, device=None) -> Tensor:
    """Gaussian neighbourhood weights w_ij = (2πσ²)^-1 exp(-||p_i - p_j||² / (2σ²)) (ISCAM Eq. 7).

    Positions p are (row, column) in pixels of the map the loss is computed on.

    Args:
        height, width: size of the map; N = height · width pixels.
        sigma: σ > 0, scalar (a tensor keeps the gradient, for a learned σ).
        device: device of the result when σ is a float.
    Returns:
        (N, N) float, symmetric, positive.
    """
    if not isinstance(sigma, Tensor):
        sigma = torch.tensor(float(sigma), device=device)
    sigma = sigma.float()
    rows, cols = torch.meshgrid(
        torch.arange(height, device=sigma.device, dtype=torch.float32),
        torch.arange(width, device=sigma.device, dtype=torch.float32),
        indexing="ij",
    )
    positions = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)
    squared = (positions[:, None, :] - positions[None, :, :]).pow(2).sum(-1)
    return torch.exp(-squared / (2.0 * sigma**2)) / (2.0 * math.pi * sigma**2)


def rgb_dissimilarity(rgb: Tensor) -> Tensor:
    """Pixel dissimilarity δ(x_i, x_j) = ||x_i - x_j||_1 / C on RGB values (ISCAM Sec. 3.3).

    Args:
        rgb: (B, 3, h, w) float RGB in [0, 1] (values outside are clamped).
    Returns:
        (B, N, N) float in [0, 1], N = h · w, no gradient.
    """
    _check_maps("rgb", rgb)
    pixels = rgb.detach().float().clamp(0.0, 1.0).flatten(2).transpose(1, 2)  # (B, N, C)
    return torch.cdist(pixels, pixels, p=1.0) / rgb.shape[1]


def dissimilarity_response(delta: Tensor, mu: Tensor | float, eps: float = 1e-6) -> Tensor:
    """f(δ) = tanh(μ + log(δ / (1 - δ))) (ISCAM Eq. 8): -1 for similar, +1 for dissimilar pixels,
    μ sets the cross-over δ = 1 / (1 + e^μ).

    δ is clamped to [eps, 1 - eps] so the logit stays finite (f(0) = -1 and f(1) = +1 up to
    tanh(±(log(1/eps) - |μ|))).

    Args:
        delta: float dissimilarities in [0, 1], any shape.
        mu: μ, scalar (a tensor keeps the gradient, for a learned μ).
    Returns:
        float in [-1, 1], the shape of ``delta``.
    """
    delta = delta.clamp(eps, 1.0 - eps)
    return torch.tanh(mu + torch.log(delta) - torch.log1p(-delta))


def prediction_gap(probs: Tensor) -> Tensor:
    """Gating g(a_i, a_j) = ½ ||a_i - a_j||²_2 between the predictions of every pixel pair
    (ISCAM Sec. 3.3).

    Computed as ½ (|a_i|² + |a_j|² - 2 a_i·a_j), clamped at 0 against rounding.

    Args:
        probs: (B, C, h, w) float CAMs a.
    Returns:
        (B, N, N) float ≥ 0, N = h · w; 0 on the diagonal; ≤ 1 for probability vectors.
    """
    _check_maps("probs", probs)
    pixels = probs.float().flatten(2).transpose(1, 2)  # (B, N, C)
    squared = pixels.pow(2).sum(-1)
    gram = pixels @ pixels.transpose(1, 2)
    return (0.5 * (squared[:, :, None] + squared[:, None, :]) - gram).clamp_min(0.0)


def feature_similarity_loss(
    probs: Tensor, rgb: Tensor, sigma: Tensor | float, mu: Tensor | float, normalisation: str = "pairs"
) -> Tensor:
    """Feature similarity loss (ISCAM Eq. 6), averaged over the batch.

    L_fs = -(HW)^-2 sum_ij w_ij g(a_i, a_j) f(δ(x_i, x_j)), over all ordered pixel pairs of the
    map (the diagonal contributes 0). Similar nearby pixels (f < 0) are pushed to equal
    predictions; dissimilar ones (f > 0) apart.

    Args:
        probs: (B, C, h, w) float CAMs a (all channels, background included).
        rgb: (B, 3, h, w) float RGB in [0, 1] at the resolution of ``probs``.
        sigma: σ > 0 of Eq. 7 (tensor to learn it).
        mu: μ of Eq. 8 (tensor to learn it).
        normalisation: ``pairs`` divides by (HW)² as Eq. 6; ``pixels`` by HW as the authors'
            code does (with the normalised Gaussian, a per-pixel mean: HW times larger).
    Returns:
        scalar float (its sign depends on the data).
    Raises:
        ValueError: shapes differ or unknown normalisation.
    """
    _check_maps("probs", probs)
    _check_maps("rgb", rgb)
    if probs.shape[0] != rgb.shape[0] or probs.shape[-2:] != rgb.shape[-2:]:
        raise ValueError(f"probs {tuple(probs.shape)} and rgb {tuple(rgb.shape)}: expected the same B, h, w")
    if normalisation not in ("pairs", "pixels"):
        raise ValueError(f"normalisation={normalisation!r}: expected 'pairs' or 'pixels'")
    height, width = probs.shape[-2:]
    pixels = height * width
    weights = spatial_weights(height, width, sigma, device=probs.device)
    response = dissimilarity_response(rgb_dissimilarity(rgb), mu)
    total = (weights * prediction_gap(probs) * response).sum(dim=(1, 2))
    scale = pixels**2 if normalisation == "pairs" else pixels
    return -(total / scale).mean()


class FeatureSimilarity(nn.Module):
    """The feature similarity loss with its σ and μ as parameters (ISCAM Sec. 3.3: "we learn them
    together with the network parameters").

    σ is parametrised by its log (stays positive). The paper gives no values; the defaults are
    the fixed values of the authors' code (σ = 5 pixels of the CAM map, μ = 2.5). With
    ``learn=True`` they get gradients; note ∂L_fs/∂μ = -c Σ w g (1 - f²) ≤ 0 (c > 0): descent on
    this loss alone only ever raises μ (see :class:`pipeline.wsss.objectives.IsCamObjective`).

    ``forward(probs, rgb)`` returns :func:`feature_similarity_loss` (a scalar).
    """

    def __init__(self, sigma: float = 5.0, mu: float = 2.5, learn: bool = False, normalisation: str = "pairs"):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma={sigma}: must be > 0")
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)), requires_grad=learn)
        self.mu = nn.Parameter(torch.tensor(float(mu)), requires_grad=learn)
        self.normalisation = normalisation

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def forward(self, probs: Tensor, rgb: Tensor) -> Tensor:
        return feature_similarity_loss(probs, rgb, self.sigma, self.mu, self.normalisation)


__all__ = [
    "FeatureSimilarity",
    "binary_cross_entropy",
    "cam_probabilities",
    "classification_loss",
    "dissimilarity_response",
    "feature_similarity_loss",
    "importance_sample",
    "max_pool_prediction",
    "prediction_gap",
    "rgb_dissimilarity",
    "sampled_prediction",
    "spatial_weights",
]
