"""The Hinton et al. distillation loss against its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compression.distill import kd_loss


def test_hand_computed_case() -> None:
    # T = 2: teacher logits [2, 0] soften to softmax([1, 0]), student [0, 2] to softmax([0, 1]).
    # KL(p_t || p_s) = (σ(1) − σ(−1)) · ln(σ(1)/σ(−1)) = tanh(1/2) · 1; times T² = 4.
    # CE(student, label 0) = ln(1 + e²). α = 0.5 weighs both halves equally.
    s = torch.tensor([[0.0, 2.0]])
    t = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([0])
    expected = 0.5 * 4 * math.tanh(0.5) + 0.5 * math.log(1 + math.e ** 2)
    assert kd_loss(s, t, y, temperature=2.0, alpha=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_matches_formula_on_a_batch() -> None:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 10)) * 3, rng.normal(size=(5, 10)) * 3
    y = rng.integers(0, 10, size=5)
    T, alpha = 4.0, 0.9

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_t, p_s = softmax(t / T), softmax(s / T)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1).mean()  # teacher is the target
    ce = -np.log(softmax(s)[np.arange(5), y]).mean()
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), T, alpha).item()
    assert got == pytest.approx(expected, rel=1e-9)


def test_zero_loss_and_gradient_when_student_equals_teacher() -> None:
    t = torch.randn(8, 10, dtype=torch.float64) * 5
    s = t.clone().requires_grad_(True)
    loss = kd_loss(s, t, torch.zeros(8, dtype=torch.long), temperature=4.0, alpha=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(s.grad, torch.zeros_like(s.grad), atol=1e-12)


def test_alpha_zero_is_plain_cross_entropy() -> None:
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([1, 2, 3, 4])
    assert kd_loss(s, t, y, 4.0, 0.0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(s, y).item(), rel=1e-6)


def test_without_labels_only_the_soft_term_remains() -> None:
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    soft = kd_loss(s, t, None, 3.0, 0.2).item()
    assert soft == pytest.approx(kd_loss(s, t, torch.zeros(4, dtype=torch.long), 3.0, 1.0).item())


def test_feature_losses_match_their_formulas() -> None:
    from compression.distill import feature_loss

    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert feature_loss(s, t, "mse").item() == pytest.approx((1 + 0 + 1 + 4) / 4)
    # cos = 1 for the first row, 0 for the second: mean(1 - cos) = 0.5
    assert feature_loss(s, t, "cosine").item() == pytest.approx(0.5)
    x = torch.randn(3, 4, 5)
    assert feature_loss(x, 2 * x, "cosine").item() == pytest.approx(0.0, abs=1e-6)  # direction only
    with pytest.raises(ValueError):
        feature_loss(s, t, "l1")
