"""Structural pruning and student derivation on conv nets, and lifting loaded graphs into layers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from compression.errors import BuildError
from compression.lift import AnyBatchNorm, from_exported, from_torchscript
from compression.prune import PruneOptions, count_macs_params, layer_widths, narrow, output_layers, prune


class Net(nn.Module):
    def __init__(self, fixed_reshape: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)  # residual: conv2's channels tie to conv1's
        self.head = nn.Linear(16 * 4 * 4 if fixed_reshape else 16, 10)
        self.fixed_reshape = fixed_reshape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(h) + h)
        h = nn.functional.max_pool2d(h, 2)
        if self.fixed_reshape:
            return self.head(h.reshape(-1, 16 * 4 * 4))
        return self.head(h.mean(dim=(2, 3)))


@pytest.fixture
def example() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 1, 8, 8)


def test_conv_net_channels_shrink_through_batch_norm_and_residual(example: torch.Tensor) -> None:
    model = Net().eval()
    keep = output_layers(model, (example,))
    assert keep == [model.head]
    steps = []
    report = prune(model, (example,), keep, PruneOptions(ratio=0.5, steps=2, round_to=None,
                                                      finetune_epochs=4),
                   lambda m, epochs, step: steps.append((step, epochs)))
    assert steps == [(1, 2), (2, 2)]
    assert report.widths_before == {"conv1": 16, "conv2": 16}
    assert report.widths_after == {"conv1": 8, "conv2": 8}
    assert model.bn1.num_features == 8 and model.conv2.in_channels == 8 and model.head.in_features == 8
    assert model(example).shape == (4, 10)
    assert report.macs_after < 0.4 * report.macs_before
    assert [s["step"] for s in report.steps] == [1, 2]


def test_taylor_importance_uses_the_given_loss(example: torch.Tensor) -> None:
    model = Net().eval()
    calls = []

    def loss(m: nn.Module) -> torch.Tensor:
        calls.append(1)
        return m(example).pow(2).mean()

    prune(model, (example,), [model.head], PruneOptions(ratio=0.25, importance="taylor", round_to=None,
                                                     finetune_epochs=0), lambda *a: None, loss)
    assert calls == [1] and model.conv1.out_channels == 12


def test_a_fixed_reshape_is_a_clear_error(example: torch.Tensor) -> None:
    model = Net(fixed_reshape=True).eval()
    with pytest.raises(BuildError, match="fixed size"):
        prune(model, (example,), [model.head], PruneOptions(round_to=None, finetune_epochs=0),
              lambda *a: None)


def test_narrow_student_scales_widths_and_reinitialises(example: torch.Tensor) -> None:
    teacher = Net().eval()
    student = narrow(teacher, (example,), [teacher.head], 0.25, seed=0)
    assert layer_widths(student, (example,), [student.head]) == {"conv1": 4, "conv2": 4}
    assert teacher.conv1.out_channels == 16  # the teacher is untouched
    assert student(example).shape == (4, 10)
    again = narrow(teacher, (example,), [teacher.head], 0.25, seed=0)
    assert torch.equal(student.conv1.weight, again.conv1.weight)  # seeded
    kept = teacher.conv1.weight[:4]
    assert not torch.allclose(student.conv1.weight, kept)  # fresh weights, not the teacher's


def test_lifted_graphs_compute_what_the_originals_do(example: torch.Tensor) -> None:
    teacher = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(teacher, (example,), dynamic_shapes=({0: torch.export.Dim("b")},))
        traced = torch.jit.trace(teacher, example)
    for lifted in (from_exported(program), from_torchscript(traced, (example,))):
        kinds = {type(m) for m in lifted.modules()}
        assert {nn.Conv2d, nn.BatchNorm2d, nn.Linear} <= kinds
        x = torch.randn(7, 1, 8, 8)
        torch.testing.assert_close(lifted(x), teacher(x), rtol=1e-5, atol=1e-5)
        assert count_macs_params(lifted, (example,))[0] == count_macs_params(teacher, (example,))[0]
        # and it prunes like the original
        report = prune(lifted, (example,), output_layers(lifted, (example,)),
                       PruneOptions(round_to=None, finetune_epochs=0), lambda *a: None)
        assert list(report.widths_after.values()) == [8, 8]
        assert lifted(x).shape == (7, 10)


def test_any_batch_norm_takes_any_rank() -> None:
    norm = AnyBatchNorm(3).eval()
    for shape in ((2, 3), (2, 3, 5), (2, 3, 4, 4, 4)):
        assert norm(torch.randn(*shape)).shape == shape
