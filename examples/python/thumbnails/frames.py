"""Raw video frames: what the pipeline's input is made of, and the one
piece of image processing it does."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

#: Height, width and RGB of every input frame.
SHAPE = (480, 640, 3)
FRAME_BYTES = SHAPE[0] * SHAPE[1] * SHAPE[2]
#: A thumbnail: half the height and width, one grayscale byte per pixel.
THUMB_BYTES = (SHAPE[0] // 2) * (SHAPE[1] // 2)


def frames_in(nbytes: int) -> int:
    """How many whole frames fit in ``nbytes``."""
    return max(1, nbytes // FRAME_BYTES)


def make_input(path: str, nbytes: int, seed: int = 7) -> int:
    """Writes a deterministic raw video of about ``nbytes`` to ``path``;
    returns its number of frames."""
    count = frames_in(nbytes)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=SHAPE, dtype=np.uint8)
    with open(path, "wb") as out:
        for i in range(count):
            # Each frame a little different: a moving gradient on the base.
            frame = base + np.uint8(i % 251)
            out.write(frame.tobytes())
    return count


def thumbnail(frame_bytes, out: bytearray) -> None:
    """Half-size grayscale of one frame (ITU-R 601 weights, integer math),
    into ``out``."""
    frame = np.frombuffer(frame_bytes, dtype=np.uint8).reshape(SHAPE)
    small = frame[::2, ::2].astype(np.uint16)
    gray = (small[..., 0] * 77 + small[..., 1] * 150 + small[..., 2] * 29) >> 8
    np.frombuffer(out, dtype=np.uint8)[:] = gray.astype(np.uint8).ravel()


def read_exact(source: BinaryIO, buf: bytearray) -> int:
    """Fills ``buf`` from ``source``; fewer bytes only at its end."""
    view = memoryview(buf)
    filled = 0
    while filled < len(buf):
        n = source.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled
