"""The page worker's batched loop (app/worker_loop.py): what a drain runs, and ``at_step_end``.

The drain itself is pure Python; only ``install`` touches Pyodide, so these run in CPython on
handles of an unstarted loop."""

import asyncio

import pytest

from app import worker_loop


class _Port:
    def __init__(self):
        self.posted = 0

    def postMessage(self, _message):  # noqa: N802 - the JS name
        self.posted += 1


@pytest.fixture()
def loop(monkeypatch):
    loop = asyncio.new_event_loop()
    monkeypatch.setattr(worker_loop, "_channel", type("Channel", (), {"port2": _Port()})())
    yield loop
    worker_loop._ready.clear()
    worker_loop._drain_due = False
    loop.close()


def _queue(loop, fn):
    worker_loop._ready.append(asyncio.Handle(fn, (), loop))


def test_a_step_end_function_runs_right_after_its_step_before_the_next(loop):
    seen = []

    def first():
        seen.append("first")
        assert worker_loop.at_step_end(lambda: seen.append("after first"))

    _queue(loop, first)
    _queue(loop, lambda: seen.append("second"))
    worker_loop._drain()
    assert seen == ["first", "after first", "second"]
    assert not worker_loop._ready


def test_a_drain_runs_what_was_ready_when_it_started_only(loop):
    seen = []

    def first():
        seen.append("first")
        worker_loop._call_soon(loop, lambda: seen.append("later"))  # a step's call_soon: a new drain

    _queue(loop, first)
    worker_loop._drain()
    assert seen == ["first"] and len(worker_loop._ready) == 1 and worker_loop._channel.port2.posted == 1
    worker_loop._drain()
    assert seen == ["first", "later"]


def test_outside_a_drain_nothing_is_queued_and_the_caller_is_told(loop):
    assert worker_loop.at_step_end(lambda: None) is False
    assert not worker_loop._step_end


def test_a_failing_step_still_leaves_the_drain_state_clean(loop):
    def bad():
        raise RuntimeError("boom")  # asyncio.Handle reports it to the loop's handler

    loop.set_exception_handler(lambda _loop, _ctx: None)
    _queue(loop, bad)
    _queue(loop, lambda: None)
    worker_loop._drain()
    assert worker_loop._draining is False and not worker_loop._ready


def test_a_failing_step_end_function_is_reported_and_the_drain_goes_on(loop, monkeypatch):
    seen, reported = [], []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx["message"]))

    def first():
        worker_loop.at_step_end(lambda: 1 / 0)
        worker_loop.at_step_end(lambda: seen.append("second step-end"))

    _queue(loop, first)
    _queue(loop, lambda: seen.append("next step"))
    worker_loop._drain()
    assert seen == ["second step-end", "next step"] and len(reported) == 1


def test_handles_left_behind_get_a_drain_of_their_own(loop):
    def interrupted():
        raise KeyboardInterrupt  # BaseException: asyncio.Handle lets it through

    _queue(loop, interrupted)
    _queue(loop, lambda: None)
    with pytest.raises(KeyboardInterrupt):
        worker_loop._drain()
    assert len(worker_loop._ready) == 1 and worker_loop._channel.port2.posted == 1 and worker_loop._drain_due
