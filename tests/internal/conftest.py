"""Tests that import slimserve's own generated `inference` protos.

They run in their own pytest session (see scripts/test.sh): tritonclient registers the same
`inference.*` symbols in protobuf's default pool, and the two copies cannot share one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
