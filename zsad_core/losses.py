"""Segmentation losses of the trained methods (AdaCLIP, SDP+), on probabilities (methods.md §2.9).

Both follow the April-GAN definitions that AdaCLIP and CLIP-AD reuse:

- :func:`focal_loss`: ``-(1 - p_t)^gamma log(p_t + smooth)`` averaged over every pixel, where
  ``p_t`` is the probability given to the (label-smoothed) target class. The input is already a
  probability: no sigmoid or softmax inside, no alpha weighting.
- :func:`dice_loss`: ``1 - (2 sum(p g) + 1) / (sum(p) + sum(g) + 1)`` per sample, averaged over the batch.
"""

from __future__ import annotations

import torch


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on class probabilities.

    Args:
        probs: (B, C, ...) probabilities summing to 1 over C (e.g. (B, 2, S, S) maps or (B, 2) scores).
        target: (B, ...) class indices (any dtype holding integers, e.g. a {0, 1} float mask), or a
            one-hot (B, C, ...) tensor.
        gamma: focusing exponent.
        smooth: label smoothing of the one-hot (clamped to ``[smooth / (C - 1), 1 - smooth]``) and
            the term added inside the log.
    Returns:
        Scalar mean over every pixel (and sample).
    """
    if probs.dim() < 2:
        raise ValueError(f"probs must be (B, C, ...), got shape {tuple(probs.shape)}")
    num_classes = probs.shape[1]
    if target.shape == probs.shape:
        one_hot = target.to(probs.dtype)
    elif target.shape == probs.shape[:1] + probs.shape[2:]:
        indices = target.long()
        if indices.numel() and (indices.min() < 0 or indices.max() >= num_classes):
            raise ValueError(f"target classes must lie in [0, {num_classes - 1}]")
        one_hot = torch.zeros_like(probs).scatter_(1, indices.unsqueeze(1), 1.0)
    else:
        raise ValueError(
            f"target shape {tuple(target.shape)} fits neither probs {tuple(probs.shape)} (one-hot) "
            "nor probs without the class axis (indices)"
        )
    if smooth:
        one_hot = one_hot.clamp(smooth / max(num_classes - 1, 1), 1.0 - smooth)
    p_target = (one_hot * probs).sum(dim=1) + smooth
    return (-((1.0 - p_target) ** gamma) * p_target.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary dice loss with smoothing 1, per sample, averaged over the batch.

    Args:
        prob: (B, ...) probabilities of the positive class.
        target: (B, ...) {0, 1} ground truth of the same shape.
    Returns:
        Scalar ``mean_b [1 - (2 sum(p g) + 1) / (sum(p) + sum(g) + 1)]``.
    """
    if prob.shape != target.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(target.shape)} must have the same shape")
    batch = prob.shape[0]
    p = prob.reshape(batch, -1)
    g = target.reshape(batch, -1).to(p.dtype)
    dice = (2.0 * (p * g).sum(dim=1) + 1.0) / (p.sum(dim=1) + g.sum(dim=1) + 1.0)
    return (1.0 - dice).mean()
