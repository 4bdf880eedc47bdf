"""The one way this project launches Chromium: Debian's binary driven by Playwright (tests and bench)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "launch"]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# no GPU and no sandbox in containers; no background traffic that would show up in request counts
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def launch(playwright: Any, args: Sequence[str] | None = None) -> Any:
    """A headless Chromium from a started Playwright (sync API); never Playwright's own download."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: the test command installs Debian's chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=list(CHROMIUM_ARGS if args is None else args))
