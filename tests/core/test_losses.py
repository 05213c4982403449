import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.losses import (
    OBJECTIVES,
    BatchNormStatistics,
    consistency_loss,
    kd_loss,
    matching_loss,
    meta_objective,
    spherical_distance,
    total_variation,
)


def test_spherical_distance_known_values():
    e = torch.eye(3)
    assert spherical_distance(e[0:1], e[0:1]).item() == pytest.approx(0.0, abs=1e-6)
    assert spherical_distance(e[0:1], e[1:2]).item() == pytest.approx(math.pi**2 / 8, rel=1e-5)  # orthogonal
    assert spherical_distance(e[0:1], -e[0:1]).item() == pytest.approx(math.pi**2 / 2, rel=1e-5)  # antipodal
    # Monotone in the angle, and the mean over rows in matching_loss.
    a = torch.stack([e[0], e[0]])
    b = torch.stack([e[1], -e[0]])
    assert matching_loss(a, b).item() == pytest.approx((math.pi**2 / 8 + math.pi**2 / 2) / 2, rel=1e-5)


def test_kd_loss_matches_the_formula():
    torch.manual_seed(0)
    s, t, temperature = torch.randn(5, 4), torch.randn(5, 4), 3.0
    p_t = torch.softmax(t / temperature, 1)
    manual = temperature**2 * (p_t * (p_t.log() - torch.log_softmax(s / temperature, 1))).sum(1).mean()
    assert kd_loss(s, t, temperature).item() == pytest.approx(manual.item(), rel=1e-5)
    assert kd_loss(t, t, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_objectives_ce_kd_is_the_sum():
    torch.manual_seed(1)
    s, t, y = torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    ce = OBJECTIVES.create("ce")(s, t, y, 4.0)
    kd = OBJECTIVES.create("kd")(s, t, y, 4.0)
    assert ce.item() == pytest.approx(F.cross_entropy(s, y).item())
    assert OBJECTIVES.create("ce_kd")(s, t, y, 4.0).item() == pytest.approx((ce + kd).item(), rel=1e-6)


def test_consistency_loss_is_scaled_cross_entropy():
    image = F.normalize(torch.randn(4, 8), dim=1)
    classes = F.normalize(torch.randn(3, 8), dim=1)
    y = torch.tensor([0, 2, 1, 1])
    assert consistency_loss(image, classes, y, 100.0).item() == pytest.approx(F.cross_entropy(100 * image @ classes.T, y).item(), rel=1e-5)


def test_total_variation_known_values():
    assert total_variation(torch.ones(1, 3, 4, 4)).item() == 0.0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # vertical stripes: every horizontal neighbour differs by 1
    assert total_variation(stripes).item() == pytest.approx(1.0)


def test_batchnorm_statistics_vanish_when_running_stats_match():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        features = model[0](x)
        model[1].running_mean.copy_(features.mean((0, 2, 3)))
        model[1].running_var.copy_(features.var((0, 2, 3), unbiased=False))
    with BatchNormStatistics(model) as bn:
        model(x)
        assert bn.loss().item() == pytest.approx(0.0, abs=1e-4)
        model(x + 1.0)
        assert bn.loss().item() > 0.1


def _tiny_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    train = (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1]))
    test = (torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64), torch.tensor([1, 0, 0, 1]))
    return model, train, test


def _outer(model, train, test, first_order=False):
    loss, _, _ = meta_objective(model, OBJECTIVES.create("kd"), train, test, temperature=2.0, inner_lr=0.5, first_order=first_order)
    return loss


def test_meta_kd_gradient_matches_finite_differences():
    model, train, test = _tiny_problem()
    _outer(model, train, test).backward()
    analytic = torch.cat([p.grad.flatten() for p in model.parameters()])
    numeric = []
    eps = 1e-6
    for p in model.parameters():
        flat = p.data.view(-1)  # perturb in place without recording it in the graph
        for i in range(flat.numel()):
            original = flat[i].item()
            flat[i] = original + eps
            plus = _outer(model, train, test).item()
            flat[i] = original - eps
            minus = _outer(model, train, test).item()
            flat[i] = original
            numeric.append((plus - minus) / (2 * eps))
    assert torch.allclose(analytic, torch.tensor(numeric, dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_first_order_meta_kd_drops_the_hessian_term():
    model, train, test = _tiny_problem()
    objective = OBJECTIVES.create("kd")
    _outer(model, train, test, first_order=True).backward()
    first_order = torch.cat([p.grad.flatten() for p in model.parameters()])
    # Manual: grad L_tr(theta) + grad L_te(theta_c), with theta_c = theta - alpha * grad L_tr(theta).
    params = list(model.parameters())
    loss_tr = objective(model(train[0]), train[1], train[2], 2.0)
    g_tr = torch.autograd.grad(loss_tr, params)
    adapted = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        for q, p, g in zip(adapted.parameters(), params, g_tr, strict=True):
            q.copy_(p - 0.5 * g)
    loss_te = objective(adapted(test[0]), test[1], test[2], 2.0)
    g_te = torch.autograd.grad(loss_te, list(adapted.parameters()))
    manual = torch.cat([(a + b).flatten() for a, b in zip(g_tr, g_te, strict=True)])
    assert torch.allclose(first_order, manual, rtol=1e-8, atol=1e-10)
    for p in model.parameters():
        p.grad = None
    _outer(model, train, test).backward()
    second_order = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert not torch.allclose(first_order, second_order, atol=1e-6)
