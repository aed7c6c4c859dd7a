"""Headless Chromium for what only a browser does well: printing a page to PDF and taking its picture.

The product runs without a browser (the HTML is the report); when Chromium is present the patient sheet also
gets its PDF. Found as ``$NPC_CHROMIUM``, else ``chromium``, ``chromium-browser`` or ``google-chrome`` on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from NPCPrognosisLib.io.atomic import atomic_path

#: Flags for a closed network and a root user: no sandbox, no GPU, no background connections or updates.
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


class BrowserUnavailable(RuntimeError):
    """No Chromium could be found or started; the message says how to get one."""


def find_chromium() -> str | None:
    explicit = os.environ.get("NPC_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(arguments: list[str], timeout: float) -> None:
    chromium = find_chromium()
    if chromium is None:
        raise BrowserUnavailable("no Chromium found: install Debian's 'chromium' package (apt-get install chromium) "
                                 "or set NPC_CHROMIUM to a Chromium or Chrome executable")
    with tempfile.TemporaryDirectory(prefix="npc-chromium-") as profile:
        command = [chromium, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *arguments]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrowserUnavailable(f"Chromium did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise BrowserUnavailable(f"Chromium failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")


def print_pdf(html_path: str | Path, pdf_path: str | Path, timeout: float = 120.0) -> Path:
    """The page printed to PDF as Chromium prints it (A4 from the page's ``@page`` rule, no header/footer).

    Raises
    ------
    BrowserUnavailable
        When no Chromium is installed or it fails; nothing is left at ``pdf_path`` then.
    """
    url = Path(html_path).resolve().as_uri()
    with atomic_path(pdf_path) as tmp:
        _run(["--no-pdf-header-footer", "--run-all-compositor-stages-before-draw", f"--print-to-pdf={tmp}", url],
             timeout)
        if not Path(tmp).exists() or Path(tmp).stat().st_size == 0:
            raise BrowserUnavailable(f"Chromium wrote no PDF for {html_path}")
    return Path(pdf_path)


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1000, height: int = 1400,
               timeout: float = 120.0) -> Path:
    """A PNG of the top of the page at ``width`` x ``height`` CSS pixels (README pictures)."""
    url = Path(html_path).resolve().as_uri()
    with atomic_path(png_path) as tmp:
        _run([f"--window-size={width},{height}", f"--screenshot={tmp}", url], timeout)
        if not Path(tmp).exists():
            raise BrowserUnavailable(f"Chromium wrote no screenshot for {html_path}")
    return Path(png_path)
