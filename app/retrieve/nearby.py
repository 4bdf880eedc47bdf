"""Cornerstone's ``nearbyFrames``: show an image at neighbouring slices until their own arrives."""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

from ..config import ImageQualityStatus, RetrieveStage
from .events import Refinement
from .refine import scaled_spacing
from .state import ImageState

__all__ = ["replicas"]


def replicas(ref: Refinement, stage: RetrieveStage, states: Sequence[ImageState],
             requested: set[int]) -> Iterator[Refinement]:
    """Copies of ``ref`` for the stage's nearby slices that are wanted and hold nothing as good;
    each copy is recorded as that slice's best before it is yielded."""
    n = len(states)
    for nearby in stage.nearby_frames or ():
        i = ref.index + nearby.offset
        if not 0 <= i < n or i == ref.index:
            continue
        st = states[i]
        if not st.wanted or i not in requested:
            continue
        status = nearby.image_quality_status or ImageQualityStatus.ADJACENT_REPLICATE
        if st.best is not None and int(st.best.status) >= int(status):
            continue
        im = st.image
        copy = dataclasses.replace(
            ref, index=i, sop_instance_uid=im.sop_instance_uid, frame=im.frame, status=status,
            pixel_spacing=scaled_spacing(im, ref.rows, ref.columns), bytes_received=st.bytes_received, decode_ms=0.0, final=False, url="",
        )
        st.best = copy
        yield copy
