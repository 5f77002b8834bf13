"""The variant registry: build order and name checking."""

from __future__ import annotations

import pytest

from compression.errors import UsageError
from compression.variants import VARIANTS, plan


def test_teacher_always_first_and_parents_before_children() -> None:
    assert plan(["int8"]) == ["teacher", "int8"]
    assert plan(["distilled", "pruned", "int8"]) == ["teacher", "distilled", "pruned", "int8"]
    assert plan([]) == ["teacher"]
    order = plan(list(VARIANTS))
    for name, spec in VARIANTS.items():
        if spec.parent:
            assert order.index(spec.parent) < order.index(name)


def test_unknown_variant_is_a_usage_error_naming_the_choices() -> None:
    with pytest.raises(UsageError) as caught:
        plan(["pruned", "turbo"])
    message = str(caught.value)
    assert "'turbo'" in message and all(name in message for name in VARIANTS)
    assert caught.value.exit_status == 2
