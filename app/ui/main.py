"""MicroPython entry of the page's main thread: start the UI (app/ui/glue.py), or say why not."""
import sys

from pyscript import window

try:
    from app.ui import glue

    glue.start()
except BaseException as exc:  # noqa: BLE001 - a start-up failure is a message in the page
    sys.print_exception(exc)
    window.appFail("The page could not start: %s" % exc)
