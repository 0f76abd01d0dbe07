"""How the command talks: user text printed verbatim (never read as rich markup), one
`error:` line with the exit status of the error, `warning:` lines, and Ctrl-C as one
`interrupted` line with status 130. Through the real `sam-medft` process where it matters."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from sam_medft.console import message, print_error, print_info, print_renderable, print_warning
from sam_medft.data.synthetic import MANIFEST

WEIRD = "[red]x[/]/[bad :smile: [/bold]"  # markup tags, an unclosed bracket, an emoji code
SMALL = ["--n-train", "2", "--n-val", "1", "--n-test", "1", "--size", "16"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam_medft", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _recording() -> Console:
    return Console(width=60, record=True, color_system=None, force_terminal=False)


def test_helpers_print_user_text_verbatim():
    console = _recording()
    print_error(f"{WEIRD} is missing", console=console)
    print_warning(WEIRD, console=console)
    print_info(("done", "bold green"), f": wrote {WEIRD}", console=console)
    print_info("x" * 150, console=console)  # longer than the console: still one line
    assert console.export_text().splitlines() == [
        f"error: {WEIRD} is missing", f"warning: {WEIRD}", f"done: wrote {WEIRD}", "x" * 150]


def test_markup_in_a_plain_print_would_lose_or_crash():
    """Why the helpers exist: the same text through a plain `print` is mangled or fatal."""
    from rich.errors import MarkupError

    console = _recording()
    console.print("[red]x[/] kept?")
    assert console.export_text().strip() == "x kept?"
    with pytest.raises(MarkupError):
        console.print(f"error: {WEIRD}")


def test_tables_and_styled_parts_still_render():
    console = Console(width=60, record=True, force_terminal=True, color_system="standard")
    table = Table("class")
    table.add_row(message(WEIRD))
    print_renderable(table, console=console)
    print_info(("data set OK", "green"), console=console)
    assert WEIRD in console.export_text(clear=False)
    assert "\x1b[32mdata set OK" in console.export_text(styles=True)


def test_error_warning_and_result_lines_through_the_real_command(tmp_path):
    target = tmp_path / WEIRD
    made = _cli("data", "synth", str(target), *SMALL, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"wrote 4 synthetic slices to {target} (2 train, 1 val")
    (target / "notes [bold]1 [bad.txt").write_text("mine")
    before = _digest(target)

    refused = _cli("data", "synth", str(target), *SMALL, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [refused.stderr.strip()]  # one line, never wrapped
    assert refused.stderr.startswith(f"error: {target} is not empty (it holds dataset.json")
    assert _digest(target) == before

    replaced = _cli("data", "synth", str(target), *SMALL, "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stderr.strip() == (
        f"warning: {target} holds 1 file(s) `data synth` did not write (e.g. notes [bold]1 [bad.txt); "
        "they were left as they are")
    assert (target / "notes [bold]1 [bad.txt").read_text() == "mine"


def test_bad_options_exit_2_with_one_message(tmp_path):
    bad = _cli("data", "synth", str(tmp_path / "out"), "--size", "0", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: synthetic data: size 0 is not allowed")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_status_130_and_the_folder_stays_ours(tmp_path):
    target = tmp_path / "big"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sam_medft", "data", "synth", str(target), "--n-train", "3000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (target / "images" / "train_002.png").exists():  # inside the writing loop
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["interrupted"]  # no traceback
    # what the interrupted run wrote is listed as its own: --overwrite replaces it all
    again = _cli("data", "synth", str(target), *SMALL, "--overwrite", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    fresh = _cli("data", "synth", str(tmp_path / "fresh"), *SMALL, cwd=tmp_path)
    assert fresh.returncode == 0
    assert _digest(target) == _digest(tmp_path / "fresh")
    assert (target / MANIFEST).is_file()


def test_a_run_log_file_does_not_hide_messages_from_the_terminal(tmp_path):
    """The trainer adds a FileHandler (train.log) to the sam_medft logger: its records must
    still reach stderr once; a second terminal handler (huggingface_hub's) still dedups."""
    import io
    import logging

    from sam_medft.console import _PrintedOnce

    stream = io.StringIO()
    terminal = logging.StreamHandler(stream)
    terminal.addFilter(_PrintedOnce())
    root = logging.getLogger()
    logger = logging.getLogger("sam_medft.training.test_console")
    file_handler = logging.FileHandler(tmp_path / "train.log")
    root.addHandler(terminal)
    logging.getLogger("sam_medft").addHandler(file_handler)
    try:
        logger.warning("resumed from checkpoint-00000004")
        assert stream.getvalue().count("resumed from checkpoint-00000004") == 1
        own = logging.StreamHandler(io.StringIO())  # a library's own terminal handler
        logger.addHandler(own)
        logger.warning("printed by the library's handler")
        assert "printed by the library's handler" not in stream.getvalue()
        logger.removeHandler(own)
    finally:
        root.removeHandler(terminal)
        logging.getLogger("sam_medft").removeHandler(file_handler)
        file_handler.close()
    assert "resumed from" in (tmp_path / "train.log").read_text()
