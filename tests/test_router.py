"""Routing policies choose variants as configured: fixed, weighted split (sticky), auto within a budget."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from tiny_repository import write_tiny_repository

from server.errors import InvalidInput, NotFound
from server.repository import Repository
from server.router import Router, parse_policy


@pytest.fixture()
def spec(tmp_path: Path):
    write_tiny_repository(tmp_path)
    return Repository(tmp_path).load_spec("tiny")


def test_explicit_version_wins_and_unknown_is_not_found(spec) -> None:
    router = Router(spec, parse_policy({"policy": "fixed", "variant": "teacher"}, spec))
    assert router.choose("small", {}) == "small"
    assert router.choose("", {}) == "teacher"
    with pytest.raises(NotFound, match="no variant 'int4'"):
        router.choose("int4", {})


def test_split_lands_near_its_weights(spec) -> None:
    router = Router(spec, parse_policy({"policy": "split", "weights": {"teacher": 8, "small": 2}}, spec), random.Random(1))
    counts = Counter(router.choose("", {}) for _ in range(5000))
    assert abs(counts["small"] / 5000 - 0.2) < 0.02


def test_sticky_split_keeps_a_user_on_one_variant(spec) -> None:
    policy = parse_policy({"policy": "split", "weights": {"teacher": 1, "small": 1}, "sticky_parameter": "user"}, spec)
    router = Router(spec, policy)
    for user in ("ana", "bo", "cy"):
        assert len({router.choose("", {"user": user}) for _ in range(50)}) == 1
    assert len({router.choose("", {"user": f"u{i}"}) for i in range(100)}) == 2


def test_auto_picks_fastest_within_budget(spec) -> None:
    # small: accuracy 0.945 vs teacher 0.95 (drop 0.005), p50 0.1 ms vs 0.2 ms.
    assert Router(spec, parse_policy({"policy": "auto", "max_drop": 0.01}, spec)).choose("", {}) == "small"
    assert Router(spec, parse_policy({"policy": "auto", "max_drop": 0.001}, spec)).choose("", {}) == "teacher"


@pytest.mark.parametrize(
    ("routing", "fragment"),
    [
        ({"policy": "fastest"}, "routing.policy='fastest'"),
        ({"policy": "fixed", "variant": "int4"}, "routing.variant='int4'"),
        ({"policy": "split", "weights": {"teacher": -1}}, "non-negative"),
        ({"policy": "split", "weights": {"int4": 1}}, "'int4' is not a variant"),
    ],
)
def test_bad_policies_name_the_field(spec, routing: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment.replace("(", r"\(")):
        parse_policy(routing, spec)
