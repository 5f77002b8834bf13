"""Registers the built-in `minilm` teacher: `python -m compression.build --teacher minilm` runs its pipeline."""

from __future__ import annotations

from compression.teachers import TeacherSource, register_teacher


def _build(argv: list[str]) -> int:
    # Imported on use: transformers and the MiniLM weights load only when this teacher is asked for.
    from compression.minilm.build import main

    return main(argv)


register_teacher(TeacherSource("minilm", default_data="", load=None, delegate=_build))
