"""`sam-medft app`: load the run(s), then serve the page on loopback until Ctrl-C.

The models load before the server starts, so a wrong run folder or Hub id is one error
and no half-started app. Loopback by default: the page shows patients' scans, so it is
served to this machine only unless --host says otherwise (with a warning)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sam_medft.app.session import Engine
from sam_medft.app.ui import THEME_FONTS, AppPage, gr
from sam_medft.console import print_info, print_warning
from sam_medft.errors import SamMedftError
from sam_medft.infer.predict import FineTunedSam

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def load_engine(runs: list[str], *, device: str | None = None) -> Engine:
    """The runs to show (the first is the one you click on; a second is compared)."""
    if not 1 <= len(runs) <= 2:
        raise SamMedftError(f"the app shows one run, or two side by side; got {len(runs)}")
    predictors = [FineTunedSam.load(r, device=device) for r in runs]
    names = [Path(str(r)).name or str(r) for r in runs]
    if len(names) == 2 and names[0] == names[1]:
        names = [str(r) for r in runs]
    return Engine(predictors, names)


def build_page(runs: list[str], *, device: str | None = None,
               out_dir: Path | None = None) -> gr.Blocks:
    return AppPage(load_engine(runs, device=device), out_dir).build()


def serve(runs: list[str], *, host: str = "127.0.0.1", port: int | None = None,
          device: str | None = None, out_dir: Path | None = None) -> None:
    """Build the page and serve it (blocks until Ctrl-C). Saved label maps go to `out_dir`,
    by default a temporary folder removed when the app stops (the browser downloads them)."""
    if port is not None and not 0 < port < 65536:
        raise SamMedftError(f"--port {port} is not a TCP port; use 1..65535 (or leave it out)")
    with tempfile.TemporaryDirectory(prefix="sam_medft_app_") as scratch:
        _launch(build_page(runs, device=device, out_dir=out_dir or Path(scratch)), runs[0], host,
                port)


def _launch(page: gr.Blocks, run: str, host: str, port: int | None) -> None:
    if host not in LOOPBACK:
        print_warning(f"--host {host}: the app (and the scans opened in it) can be reached "
                      f"from other machines on this network")
    print_info("app: ", (run, "bold"), " (Ctrl-C stops it)")
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                ssr_mode=False, footer_links=[], mcp_server=False, pwa=False,
                theme=gr.themes.Default(**THEME_FONTS), quiet=False)


__all__ = ["LOOPBACK", "build_page", "load_engine", "serve"]
