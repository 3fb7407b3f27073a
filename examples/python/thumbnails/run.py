"""A minimal serverless platform for the pipeline: starts its functions as
processes, as a platform would, and times the workflow from the first
function's start to the last one's exit.

Over Floki every function starts at once (each streams into the next as it
runs); over S3 a stage starts when the previous one has uploaded its
objects, as an orchestrator (Step Functions, Argo) runs them.

    python -m thumbnails.run spec --node NODE        # the workflow, to `floki-agent apply`
    python -m thumbnails.run input --bytes N --out FILE
    python -m thumbnails.run floki --agent A --token T --input IN --output OUT
    python -m thumbnails.run s3 --endpoint URL --bucket B --input IN --output OUT

Each run prints one JSON line: seconds and frames.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Dict, List

from .frames import FRAME_BYTES, make_input

WORKERS = 4
WORKFLOW = "thumbnails"


def spec(node: str) -> str:
    """The workflow: split -> shrink-0..3 (a partition each) -> assemble."""
    shrinks = [f"shrink-{j}" for j in range(WORKERS)]
    functions = "".join(
        f"    - {{ name: {name}, node: {node} }}\n" for name in ["split", *shrinks, "assemble"]
    )
    return (
        "apiVersion: floki.dev/v1\nkind: Workflow\n"
        f"metadata:\n  name: {WORKFLOW}\nspec:\n  functions:\n{functions}"
        "  edges:\n"
        f"    - {{ name: frames, from: [split], to: [{', '.join(shrinks)}], pattern: shuffle, buffer: 8MiB }}\n"
        f"    - {{ name: thumbs, from: [{', '.join(shrinks)}], to: [assemble], pattern: gather, buffer: 8MiB }}\n"
    )


def start(module: str, args: List[str], env: Dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"thumbnails.{module}", *args],
        env={**os.environ, **env},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def wait(processes: List[subprocess.Popen]) -> None:
    failed = [p.args for p in processes if p.wait() != 0]
    if failed:
        raise SystemExit(f"functions failed: {failed}")


def on_floki(args) -> None:
    # One id per run, as an orchestrator's execution id: the consumers start
    # first, and must not read what the last run's producers left stored.
    run = uuid.uuid4().hex

    def env(function: str) -> Dict[str, str]:
        return {
            "FLOKI_WORKFLOW": WORKFLOW,
            "FLOKI_FUNCTION": function,
            "FLOKI_TOKEN": args.token,
            "FLOKI_AGENT": args.agent,
            "FLOKI_RUN": run,
        }

    functions = [("assemble", [args.output])]
    functions += [(f"shrink-{j}", []) for j in range(WORKERS)]
    functions += [("split", [args.input])]
    started = time.monotonic()
    wait(
        [
            start("on_floki", [name.split("-")[0], *extra], env(name))
            for name, extra in functions
        ]
    )
    report(started)


def on_s3(args) -> None:
    env = {
        "S3_ENDPOINT": args.endpoint,
        "S3_BUCKET": args.bucket,
        "AWS_ACCESS_KEY_ID": args.access_key,
        "AWS_SECRET_ACCESS_KEY": args.secret_key,
    }
    started = time.monotonic()
    wait([start("on_s3", ["split", args.input], env)])
    wait([start("on_s3", ["shrink", str(j)], env) for j in range(WORKERS)])
    wait([start("on_s3", ["assemble", args.output], env)])
    report(started)


def report(started: float) -> None:
    seconds = time.monotonic() - started
    print(json.dumps({"seconds": seconds}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m thumbnails.run")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("spec")
    p.add_argument("--node", required=True)
    p = sub.add_parser("input")
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--out", required=True)
    for name in ("floki", "s3"):
        p = sub.add_parser(name)
        p.add_argument("--input", required=True)
        p.add_argument("--output", required=True)
    floki_args = sub.choices["floki"]
    floki_args.add_argument("--agent", required=True)
    floki_args.add_argument("--token", required=True)
    s3_args = sub.choices["s3"]
    s3_args.add_argument("--endpoint", required=True)
    s3_args.add_argument("--bucket", required=True)
    s3_args.add_argument("--access-key", default=os.environ.get("AWS_ACCESS_KEY_ID", ""))
    s3_args.add_argument("--secret-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
    args = parser.parse_args()
    if args.what == "spec":
        print(spec(args.node), end="")
    elif args.what == "input":
        frames = make_input(args.out, args.bytes)
        print(json.dumps({"frames": frames, "bytes": frames * FRAME_BYTES}))
    elif args.what == "floki":
        on_floki(args)
    else:
        on_s3(args)


if __name__ == "__main__":
    main()
