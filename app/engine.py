"""The progressive retrieve engine, kept under its old name: the page, the CLI, the bench and the
tests import it from here. The code lives in ``app.retrieve`` (one module per job)."""

from __future__ import annotations

from .retrieve import (
    ACCEPT_ANY,
    DEFAULT_CONCURRENCY,
    EngineEvent,
    FirstBytes,
    ImageFailed,
    Phase,
    Refinement,
    RequestFinished,
    RequestRetried,
    RequestStarted,
    RetrieveEngine,
    RetrievePolicy,
    frame_request_url,
)

__all__ = [
    "ACCEPT_ANY",
    "DEFAULT_CONCURRENCY",
    "EngineEvent",
    "FirstBytes",
    "ImageFailed",
    "Phase",
    "Refinement",
    "RequestFinished",
    "RequestRetried",
    "RequestStarted",
    "RetrieveEngine",
    "RetrievePolicy",
    "frame_request_url",
]
