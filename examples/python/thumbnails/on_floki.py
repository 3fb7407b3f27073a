"""The pipeline's functions over Floki: each streams straight into the
next. A function learns its place from the environment the platform sets
(FLOKI_WORKFLOW, FLOKI_FUNCTION, FLOKI_TOKEN, FLOKI_AGENT).

    python -m thumbnails.on_floki split INPUT
    python -m thumbnails.on_floki shrink
    python -m thumbnails.on_floki assemble OUTPUT
"""

from __future__ import annotations

import sys

import floki

from . import pipeline


def split(video_path: str) -> None:
    senders = list(floki.Edge("frames").senders().values())
    with open(video_path, "rb", buffering=0) as video:
        pipeline.split(video, senders)
    for tx in senders:
        tx.finish()


def shrink() -> None:
    (rx,) = floki.Edge("frames").receivers().values()
    (tx,) = floki.Edge("thumbs").senders().values()
    pipeline.shrink(rx, tx)
    rx.finish()
    tx.finish()


def assemble(sheet_path: str) -> None:
    receivers = list(floki.Edge("thumbs").receivers().values())
    with open(sheet_path, "wb") as sheet:
        pipeline.assemble(receivers, sheet)
    for rx in receivers:
        # Each stream to its verified end.
        if rx.read():
            raise RuntimeError("a shrink function sent more thumbnails than frames")
        rx.finish()


if __name__ == "__main__":
    function, *args = sys.argv[1:]
    {"split": split, "shrink": shrink, "assemble": assemble}[function](*args)
