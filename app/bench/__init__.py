"""``python -m app bench``: measure the viewer the way Cornerstone3D's table is measured, and more.

What it does (see ``docs/benchmark.md`` for results and method):

* starts ``serve.py`` as a server process on 127.0.0.1 (any free port) over the demo tree, and a
  proxy in front of it that counts the body bytes sent per request (``network.py``);
* ``--engine browser`` (default, ``browser.py``): headless Chromium through Playwright. Cold start
  first (fresh context, no emulation). Then, per network profile, per mode, per run: a fresh context
  with the HTTP cache disabled waits until Python is ready, THEN applies Chromium's network emulation
  and clicks Load: only the study's own requests run under the emulated network.
* ``--engine cpython`` (``cpython.py``): the same modes through the CPython engine, no browser;
  profiles other than ``none`` are emulated by the proxy (one shared link per direction: bandwidth
  serialisation plus half the latency each way).

Times: "first render" is the first renderLog entry with ``drawn`` true for image 0, taken as
``image_t_ms`` (from the image's first request, as Cornerstone's table) and from the click.
"Final" is the entry with ``final`` true. The network floor of a render is
``latency + bytes it needed / bandwidth + its own decode time`` (``profiles.py``). Results are
dataclasses (``results.py``), rendered by ``report.py``.
"""

from __future__ import annotations

from .network import ThrottleProxy
from .profiles import MODES, PROFILES, STACK_PRESETS
from .report import check_targets, render_markdown, write_outputs
from .results import BenchResult
from .runner import main, rerender, run_bench

__all__ = ["PROFILES", "MODES", "STACK_PRESETS", "main", "run_bench", "rerender", "ThrottleProxy",
           "render_markdown", "check_targets", "write_outputs", "BenchResult"]
