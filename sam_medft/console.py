"""The one place the commands print from: rich consoles, plain-text messages, logging.

Messages carry user data (paths, ids, values). Rich would read `[...]` in them as markup
(a path `scans/[red]x[/]` loses its brackets, `[/]` crashes the printer) and `:name:` as an
emoji, so every message is built as a `rich.text.Text`: only the label we add is styled,
the user's text is printed verbatim. Tables and other renderables pass through unchanged.

Piped output (logs, CI, `| tee`) gets 160 columns instead of rich's 80-column default, so
metric tables are not wrapped or cut; messages are never wrapped (a path stays one piece).
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console, RenderableType
from rich.text import Text

EXIT_CTRL_C = 130  # 128 + SIGINT, the shell's convention for a command stopped by Ctrl-C


def stdout_console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160)


def stderr_console() -> Console:
    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def message(*parts: str | tuple[str, str]) -> Text:
    """Plain strings verbatim, `(text, style)` pairs styled: never parsed as markup."""
    return Text.assemble(*parts)


def _emit(console: Console | None, stderr: bool, text: RenderableType) -> None:
    console = console or (stderr_console() if stderr else stdout_console())
    if isinstance(text, Text):
        console.print(text, soft_wrap=True, highlight=False)
    else:  # a table or other renderable built by the library
        console.print(text)


def print_info(*parts: str | tuple[str, str], console: Console | None = None) -> None:
    """A result line on stdout (`print_info(("done", "bold green"), ": 10 steps")`)."""
    _emit(console, False, message(*parts))


def print_renderable(renderable: RenderableType, console: Console | None = None) -> None:
    """A table (or other rich renderable) on stdout; plain strings go through `print_info`."""
    if isinstance(renderable, str):
        print_info(renderable, console=console)
    else:
        _emit(console, False, renderable)


def print_warning(text: object, console: Console | None = None) -> None:
    """`warning: <text>` on stderr."""
    _emit(console, True, message(("warning", "yellow"), ": ", str(text)))


def print_error(text: object, console: Console | None = None) -> None:
    """`error: <text>` on stderr (a SamMedftError's message, verbatim)."""
    _emit(console, True, message(("error:", "bold red"), " ", str(text)))


def print_interrupted(console: Console | None = None) -> None:
    """The one line a Ctrl-C outside training leaves (exit status 130)."""
    _emit(console, True, message(("interrupted", "bold red")))


class _PrintedOnce(logging.Filter):
    """Drop records that a handler nearer their logger already printed.

    huggingface_hub (and transformers when `CI` is set) give their root logger a handler of
    their own and still propagate to the root: with a root handler too, every warning (the
    Hub's retry notices, ...) would print twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if any(_prints(h) for h in logger.handlers):
                return False
            if not logger.propagate:
                break
            logger = logger.parent  # type: ignore[assignment]
        return True


def _prints(handler: logging.Handler) -> bool:
    """A handler that shows records to the user (a log file, e.g. a run's train.log, does not)."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


_HANDLER_NAME = "sam_medft"


def configure_logging() -> None:
    """`LEVEL logger: message` on stderr, once per record; sam_medft's own at INFO."""
    root = logging.getLogger()
    if not any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        handler = logging.StreamHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_PrintedOnce())
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("sam_medft").setLevel(logging.INFO)
