"""The multilayer perceptron used by the built-in `digits` teacher and its students."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """inputs → [dropout] → (Linear → ReLU → dropout) per hidden layer → Linear `head` (logits).

    Plain named submodules (`fc1`, `fc2`, ..., `head`) so ONNX initializers get readable names and
    Torch-Pruning can trace the dependency graph through them.
    """

    def __init__(self, inputs: int, hidden: Sequence[int], outputs: int,
                 dropout: float = 0.0, input_dropout: float = 0.0) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if input_dropout > 0:
            layers["drop0"] = nn.Dropout(input_dropout)
        width = inputs
        for i, size in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, size)
            layers[f"relu{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            width = size
        layers["head"] = nn.Linear(width, outputs)
        super().__init__(layers)

    def hidden_sizes(self) -> list[int]:
        """Current widths of the hidden layers (they shrink when pruned)."""
        return [m.out_features for name, m in self.named_children()
                if isinstance(m, nn.Linear) and name != "head"]
