"""Offline half of slimserve: build compressed ONNX variants of a teacher into a model repository."""

__all__ = ["__version__"]

# Recorded as tools.slimserve in every manifest; kept in step with pyproject.toml.
__version__ = "0.1.0"
