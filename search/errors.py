"""User-facing errors of the ``sparsesearch`` package.

Every error a user can fix (a bad spec, a missing file, a corrupted Parquet part, ...)
is raised as a subclass of :class:`UserError`. The CLI catches ``UserError``, prints
its one-line message (no traceback) and exits with :data:`EXIT_USER_ERROR` (2).
Programming errors keep their ordinary exception types (``ValueError``, ``TypeError``).
"""

from __future__ import annotations

import re

__all__ = ["EXIT_USER_ERROR", "UserError"]

#: Process exit code the CLI uses for a :class:`UserError`.
EXIT_USER_ERROR = 2

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class UserError(Exception):
    """An error caused by input the user can fix; its message is exactly one line.

    The message should name the offending file / setting and the fix, e.g.
    ``"trials/part-000003-1a2b3c4d.parquet is unreadable (...); move it aside ..."``.
    Line breaks inside ``message`` (for instance from a wrapped library error) are
    folded into single spaces so the CLI always prints one line.

    Attributes:
        exit_code: process exit code the CLI uses (2).

    Subclass it per module (``TrialLogError`` in :mod:`search.trial_log`, ...).
    """

    exit_code: int = EXIT_USER_ERROR

    def __init__(self, message: object) -> None:
        one_line = _LINE_BREAKS.sub(" ", str(message)).strip()
        super().__init__(one_line)

    @property
    def message(self) -> str:
        """The one-line message (same as ``str(err)``)."""
        return str(self.args[0]) if self.args else ""
