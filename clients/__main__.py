"""Entry point of `python -m clients`."""

import sys

from clients.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
