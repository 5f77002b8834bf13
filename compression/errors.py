"""Exceptions of the build, each carrying the exit status the command line reports.

    BuildError            exit 1: the build itself failed
    └── UsageError        exit 2: the request was wrong (unknown variant, missing file, bad value)
"""

__all__ = ["BuildError", "UsageError"]


class BuildError(Exception):
    """The build failed; the message is one line meant for the user."""

    exit_status = 1


class UsageError(BuildError):
    """The command line asked for something that cannot be built."""

    exit_status = 2
