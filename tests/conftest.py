"""Shared fixtures: a live serve.py on loopback, the demo data, and a real headless Chromium."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

import serve  # noqa: E402
from app.bench.chromium import CHROMIUM, CHROMIUM_ARGS, launch  # noqa: E402,F401 (shared launch code)


@dataclass
class LiveServer:
    """serve.py running in a thread on 127.0.0.1; ``log`` holds one dict per request."""

    server: serve.Server
    thread: threading.Thread
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.server.url.rstrip("/")

    @property
    def log(self):
        return self.server.request_log

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def serve_dir():
    """Factory: ``serve_dir(data_root) -> LiveServer`` (stopped at the end of the session)."""
    started: list[LiveServer] = []

    def start(data_root: Path, **kwargs) -> LiveServer:
        server = serve.make_server("127.0.0.1", 0, project_root=PROJECT, data_root=Path(data_root),
                                   **kwargs)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        live = LiveServer(server, thread)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


@pytest.fixture(scope="session")
def runtime() -> Path:
    """The browser runtime under static/ (idempotent; the test command lays it out first)."""
    from tools.setup_runtime import ensure_runtime

    return ensure_runtime()


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The converted demo studies under static/dicomweb (downloads cached in .cache/)."""
    from tools.demo_data import ensure_demo_data

    return ensure_demo_data(PROJECT)


@pytest.fixture(scope="session")
def demo_server(runtime, demo_data, serve_dir) -> LiveServer:
    """The app, its runtime and the demo data, as ``python serve.py`` serves them."""
    return serve_dir(demo_data)


@pytest.fixture(scope="session")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the test command installs Debian's chromium")
    with playwright_api.sync_playwright() as pw:
        browser = launch(pw)
        yield browser
        browser.close()


@dataclass
class PageRecord:
    page: object
    requests: list = field(default_factory=list)
    console: list = field(default_factory=list)
    errors: list = field(default_factory=list)


@pytest.fixture
def page(browser):
    """A fresh context and page that records every request, console line and page error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    record = PageRecord(page)
    page.on("request", lambda r: record.requests.append(r.url))
    page.on("console", lambda m: record.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: record.errors.append(str(e)))
    yield record
    context.close()


def wait_for_app_state(record: PageRecord, states=("ready",), timeout_ms: int = 90_000) -> str:
    """Wait until ``html[data-app]`` is one of ``states`` or "error"; fail with the page's story."""
    page = record.page
    wanted = list(states) + ["error"]
    try:
        page.wait_for_function(
            "(w) => w.includes(document.documentElement.dataset.app)", arg=wanted, timeout=timeout_ms)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"page never reached {states}: {exc}\nconsole: {record.console[-20:]}\n"
                             f"errors: {record.errors}") from exc
    state = page.evaluate("document.documentElement.dataset.app")
    if state == "error" and "error" not in states:
        text = page.inner_text("#errors")
        raise AssertionError(f"page reported an error: {text}\nconsole: {record.console[-20:]}")
    return state


# fixtures that start a server or need the downloaded demo data (directly or through others;
# ``radiograph`` in test_convert reads the downloaded radiograph from .cache)
SERVER_FIXTURES = {"serve_dir", "demo_server", "demo_data", "runtime", "orthanc", "static_nginx",
                   "served", "radiograph"}


def pytest_collection_modifyitems(config, items):
    """Browser tests last: Playwright's sync API keeps an event loop running in the main thread
    for the rest of the session, after which ``asyncio.run`` in CPython engine tests would fail.
    Tests that start servers (serve.py, nginx, Orthanc, a module's own loopback servers, which it
    declares with ``STARTS_SERVERS = True``) or need the demo data are marked ``servers``, so
    ``pytest -m "not browser and not servers"`` is the fast tier."""
    def uses_browser(item) -> bool:
        return item.get_closest_marker("browser") is not None or bool(
            {"browser", "page"} & set(getattr(item, "fixturenames", ())))

    def starts_servers(item) -> bool:
        return (any(item.get_closest_marker(name) for name in ("nginx", "orthanc"))
                or bool(SERVER_FIXTURES & set(getattr(item, "fixturenames", ())))
                or getattr(getattr(item, "module", None), "STARTS_SERVERS", False))

    for item in items:
        if uses_browser(item):
            item.add_marker(pytest.mark.browser)
        elif starts_servers(item):
            item.add_marker(pytest.mark.servers)
    items.sort(key=uses_browser)
