"""PyScript entry point: start the viewer, or show why it could not start."""

import sys
import time

from pyscript import document, window

_t0 = time.perf_counter()
window.appTimings.pythonStartMs = window.performance.now()  # interpreter up, wheels installed


def _fail(message: str) -> None:
    window.appFail(message)


try:
    import imagecodecs  # noqa: F401  (fail early and visibly if a wheel did not load)
    import numpy  # noqa: F401

    from app import page
except Exception as exc:  # noqa: BLE001 - any start-up failure must reach the page
    _fail(f"Python could not import the viewer: {type(exc).__name__}: {exc}")
    raise

window.appTimings.pythonImportsMs = (time.perf_counter() - _t0) * 1000.0
try:
    await page.start()  # noqa: F704 - PyScript runs this module with top-level await
except Exception as exc:  # noqa: BLE001
    _fail(f"The viewer failed to start: {type(exc).__name__}: {exc}")
    print(f"start-up error: {exc!r}", file=sys.stderr)
