"""The one exception type users see.

Every error raised on bad input is a :class:`MempruneError` whose message is a single line that says what
was found and what to do. The CLI prints it without a traceback and exits with status 2.
"""

from __future__ import annotations


class MempruneError(Exception):
    """A user-facing error: one line, naming the problem and the fix."""


class UnsafeCheckpointError(MempruneError):
    """A pickle that would need arbitrary Python globals to load; it was not executed."""


class VerificationError(MempruneError):
    """A patched checkpoint does not match its manifest."""
