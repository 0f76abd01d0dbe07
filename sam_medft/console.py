"""The rich consoles the commands print with.

Piped output (logs, CI, `| tee`) gets 160 columns instead of rich's 80-column default, so
metric tables are not wrapped or cut.
"""

from __future__ import annotations

import sys

from rich.console import Console


def stdout_console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160)


def stderr_console() -> Console:
    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)
