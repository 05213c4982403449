"""Losses of METHOD.md: inversion (image-text matching, class consistency, prototypes, BN
statistics, total variation) and distillation (CE, KD, their sum, and meta-KD)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from core.registry import Registry

# --------------------------------------------------------------------------------------
# Inversion
# --------------------------------------------------------------------------------------


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``d(a, b) = 2 * arcsin(||a - b|| / 2)^2`` between unit vectors, per row.

    The /2 keeps the arcsin argument within 1 (the slides' ``arcsin^2(||a - b||)`` does not).
    """
    chord = (a - b).norm(dim=-1).div(2).clamp(max=1.0)
    return 2 * torch.arcsin(chord) ** 2


def matching_loss(image_embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Image-text (or image-prototype) matching: mean spherical distance to each row's target."""
    return spherical_distance(image_embeddings, targets).mean()


def consistency_loss(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """Class consistency: ``CE(tau * E_img . S^T, y)`` against the plain prompts (or prototypes) of all classes."""
    return F.cross_entropy(scale * image_embeddings @ class_embeddings.T, labels)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (a smoothness prior)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


class BatchNormStatistics:
    """DeepInversion's prior: match the batch statistics at every BatchNorm input to its running stats.

    A context manager that hooks the model's BatchNorm layers; ``loss()`` after a forward pass
    sums ``||mu - mu_bn||_2 + ||var - var_bn||_2`` over layers.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._terms: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0].float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self._terms.append((mean - module.running_mean).norm() + (var - module.running_var).norm())

    def __enter__(self) -> BatchNormStatistics:
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def loss(self) -> torch.Tensor:
        terms, self._terms = self._terms, []
        if not terms:
            raise RuntimeError("no BatchNorm layer ran: is the model a BatchNorm network?")
        return torch.stack(terms).sum()


# --------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch."""
    t = F.log_softmax(teacher_logits / temperature, dim=1)
    s = F.log_softmax(student_logits / temperature, dim=1)
    return temperature**2 * F.kl_div(s, t, reduction="batchmean", log_target=True)


# A distillation objective maps (student logits, teacher logits, labels, temperature) to a loss.
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
OBJECTIVES: Registry[Objective] = Registry("distillation objective")


@OBJECTIVES.register("ce")
def _ce() -> Objective:
    return lambda s, t, y, temperature: F.cross_entropy(s, y)


@OBJECTIVES.register("kd")
def _kd() -> Objective:
    return lambda s, t, y, temperature: kd_loss(s, t, temperature)


@OBJECTIVES.register("ce_kd")
def _ce_kd() -> Objective:
    return lambda s, t, y, temperature: F.cross_entropy(s, y) + kd_loss(s, t, temperature)


def meta_objective(
    model: nn.Module,
    objective: Objective,
    train_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    test_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    temperature: float,
    inner_lr: float,
    first_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Meta-KD's outer loss ``L(X_tr; theta) + L(X_te; theta - alpha * grad L(X_tr; theta))``.

    Batches are (pixels, teacher logits, labels). With ``first_order`` the inner gradient is a
    constant, dropping the ``-alpha * grad(grad L_tr . grad L_te)`` term. Returns (outer loss,
    train loss, test loss); call ``backward()`` on the first.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    x_tr, t_tr, y_tr = train_batch
    x_te, t_te, y_te = test_batch
    loss_tr = objective(functional_call(model, (params, buffers), (x_tr,)), t_tr, y_tr, temperature)
    # The outer loss backpropagates through loss_tr again, so keep its graph either way.
    grads = torch.autograd.grad(loss_tr, list(params.values()), create_graph=not first_order, retain_graph=True)
    adapted = {name: p - inner_lr * g for (name, p), g in zip(params.items(), grads, strict=True)}
    loss_te = objective(functional_call(model, (adapted, buffers), (x_te,)), t_te, y_te, temperature)
    return loss_tr + loss_te, loss_tr.detach(), loss_te.detach()
