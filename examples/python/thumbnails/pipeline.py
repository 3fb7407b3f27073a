"""The pipeline's three functions. Each takes file-like objects: where the
bytes come from and go to is the platform's business (Floki streams, or S3
objects), not the function's."""

from __future__ import annotations

from typing import BinaryIO, List, Sequence

from .frames import FRAME_BYTES, THUMB_BYTES, read_exact, thumbnail


def split(video: BinaryIO, parts: Sequence[BinaryIO]) -> int:
    """Deals frame i of ``video`` to ``parts[i % len(parts)]``; returns the
    number of frames."""
    frame = bytearray(FRAME_BYTES)
    view = memoryview(frame)
    count = 0
    while read_exact(video, frame) == FRAME_BYTES:
        parts[count % len(parts)].write(view)
        count += 1
    return count


def shrink(frames: BinaryIO, thumbs: BinaryIO) -> int:
    """Writes the thumbnail of every frame of ``frames``, in order."""
    frame = bytearray(FRAME_BYTES)
    thumb = bytearray(THUMB_BYTES)
    count = 0
    while read_exact(frames, frame) == FRAME_BYTES:
        thumbnail(frame, thumb)
        thumbs.write(thumb)
        count += 1
    return count


def assemble(parts: List[BinaryIO], sheet: BinaryIO) -> int:
    """Puts the thumbnails back in frame order (frame i came from part
    i % len(parts)); returns the number of frames."""
    thumb = bytearray(THUMB_BYTES)
    count = 0
    while read_exact(parts[count % len(parts)], thumb) == THUMB_BYTES:
        sheet.write(thumb)
        count += 1
    return count
