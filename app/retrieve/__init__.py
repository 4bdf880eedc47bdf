"""Progressive retrieval of a stack: stages over the stack, streaming and byte-range HTJ2K,
alternates, retries, preemption. Driven by a RetrieveConfig (Cornerstone3D's vocabulary).

One job per module: ``events`` (what is reported), ``settings`` (RetrievePolicy: how hard to try),
``policy`` (pure rules: what a stage fetches, which level, what is final), ``scheduler`` (pure:
which job next, which gives way), ``state`` (each image's Phase and its transitions), ``body``
(one frame resource's bytes, parsed as they arrive), ``fetch`` (one attempt per image and stage:
streamed or byte ranges, with retries), ``batch`` (frames of one instance in one ``frames/1,2,3``
request), ``nearby`` (nearbyFrames), ``budget`` (memory), and
``engine`` (RetrieveEngine, the facade that runs them on the event loop).
"""

from __future__ import annotations

from .engine import RetrieveEngine
from .events import EngineEvent, FirstBytes, ImageFailed, Refinement, RequestFinished, RequestRetried, RequestStarted
from .policy import FetchKind, Policy, frame_request_url
from .settings import ACCEPT_ANY, DEFAULT_CONCURRENCY, RetrievePolicy
from .state import Phase

__all__ = [
    "ACCEPT_ANY",
    "DEFAULT_CONCURRENCY",
    "EngineEvent",
    "FetchKind",
    "FirstBytes",
    "ImageFailed",
    "Phase",
    "Policy",
    "Refinement",
    "RequestFinished",
    "RequestRetried",
    "RequestStarted",
    "RetrieveEngine",
    "RetrievePolicy",
    "frame_request_url",
]
