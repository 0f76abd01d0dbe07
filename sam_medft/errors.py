"""The exceptions a user sees, and the exit status each one gives.

The CLI prints these as one plain-text line (no traceback); everything else is a bug and
keeps its traceback. Exit codes (documented in the README):

    0  success
    1  a bug in sam_medft (a traceback): please report it
    2  a mistake the user can fix (bad path, bad value, missing file, full disk, ...)
    3  interrupted (SIGTERM or Ctrl-C): a checkpoint was written, `--resume` continues
"""

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 3


class SamMedftError(Exception):
    """A user-facing error: the message names the file or value and how to fix it."""

    exit_code = EXIT_USER_ERROR


class Interrupted(SamMedftError):
    """Stopped on request (SIGTERM, Ctrl-C) after a consistent checkpoint: resumable."""

    exit_code = EXIT_INTERRUPTED
