"""One exception type for mistakes a user can fix.

The CLI prints these as a single line (no traceback); everything else is a bug and keeps
its traceback.
"""


class SamMedftError(Exception):
    """A user-facing error: the message names the file or value and how to fix it."""
