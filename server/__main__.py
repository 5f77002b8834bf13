"""`python -m server`: serve a model repository over gRPC with Prometheus metrics."""

from server.app import main

raise SystemExit(main())
