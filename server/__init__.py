"""slimserve's online half: a KServe v2 gRPC server for a teacher model and its compressed variants."""

__version__ = "0.1.0"
