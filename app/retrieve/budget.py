"""The memory budget: decoded pixels kept for the images nearest the one on screen, and frame
bytes held between stages, together under ``RetrievePolicy.cache_bytes``."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Sequence

import numpy

from .state import ImageState

__all__ = ["Budget", "HeldBytes"]


class HeldBytes:
    """The running total of frame bytes held between stages: each FrameBody adds what it receives
    and gives its count back when dropped, so the budget reads it per job in O(1), not by walking
    every image's bodies."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0


class Budget:
    def __init__(self, cache_bytes: int) -> None:
        self.cache_bytes = cache_bytes
        self._pixels: OrderedDict[int, int] = OrderedDict()  # index -> bytes of held pixels
        self.pixel_bytes = 0
        self.held = HeldBytes()  # handed to every FrameBody the engine makes
        # the events' pixels go to a holder of their own (the page): keep only the latest decode's,
        # the rest of the budget is for frame bytes between stages
        self.pixels_elsewhere = False

    def remember(self, states: Sequence[ImageState], index: int, nbytes: int, current: int) -> None:
        """Count a new image's pixels; drop the pixels of the images farthest from ``current``
        (their best stays, empty, so nothing worse replaces it) until within budget."""
        self.pixel_bytes += nbytes - self._pixels.pop(index, 0)
        self._pixels[index] = nbytes
        cap = 0 if self.pixels_elsewhere else self.cache_bytes
        while self.pixel_bytes > cap and len(self._pixels) > 1:
            victim = max((i for i in self._pixels if i != index), key=lambda i: abs(i - current))
            self.pixel_bytes -= self._pixels.pop(victim)
            vst = states[victim]
            if vst.best is not None:
                vst.best = dataclasses.replace(vst.best, pixels=numpy.empty((0, 0), vst.best.pixels.dtype))

    def forget(self, index: int) -> None:
        self.pixel_bytes -= self._pixels.pop(index, 0)

    @property
    def held_bytes(self) -> int:
        """Frame bytes held in the bodies of every image (a running total)."""
        return self.held.total

    def trim(self, states: Sequence[ImageState], st: ImageState, current: int) -> None:
        """After a job: drop the bytes of unwanted images; keep held bytes within the budget."""
        if not st.wanted:
            st.drop_bodies()
        if self.pixel_bytes + self.held.total <= self.cache_bytes:
            return
        for other in sorted(states, key=lambda s: -abs(s.image.index - current)):
            if self.pixel_bytes + self.held.total <= self.cache_bytes:
                break
            if not other.busy and other.bodies:
                other.drop_bodies()  # a later stage fetches this image again from the start
