"""Real agents for the Python tests: `floki-lab cluster` starts two
network-namespace nodes with an agent each (eBPF, a cgroup of their own),
and every function under test runs as its own process inside a node (its
network namespace and cgroup), as a platform would run it.

Needs root and the built binaries (`cargo xtask test` builds them and points
`FLOKI_LAB_BIN` at `floki-lab`). Under `CI=true` a missing privilege fails
the run instead of skipping it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
PEER = HERE / "peer.py"
ROOT = HERE.parent.parent


def _lab_binary() -> Path:
    explicit = os.environ.get("FLOKI_LAB_BIN")
    if explicit:
        return Path(explicit)
    return ROOT / "target" / "debug" / "floki-lab"


@dataclass
class Node:
    """One node of the test cluster."""

    name: str
    ip: str
    netns: str
    cgroup: str
    tcp: str
    unix: str
    admin: str
    agent_bin: str

    def command(self, argv: List[str], **kwargs) -> subprocess.Popen:
        """Starts `argv` inside this node: its network namespace (nsenter
        keeps /sys and the cgroup paths the host's) and its cgroup (joined
        before exec, so that every socket belongs to it)."""
        procs = Path(self.cgroup) / "cgroup.procs"

        def join_cgroup() -> None:
            procs.write_text("0")

        return subprocess.Popen(
            ["nsenter", f"--net={self.netns}", "--", *argv],
            preexec_fn=join_cgroup,
            **kwargs,
        )

    def python(self, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        """`tests/peer.py ARGS` with this interpreter, inside the node."""
        full_env = dict(os.environ)
        full_env.update(env or {})
        return self.command(
            [sys.executable, str(PEER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )

    def cli(self, *args: str) -> subprocess.Popen:
        """`floki-agent ARGS` (the Rust CLI) inside the node."""
        return self.command(
            [self.agent_bin, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def apply(self, yaml: str) -> str:
        """Applies a workflow on this node; returns its token."""
        out = subprocess.run(
            [self.agent_bin, "apply", "-", "--admin", self.admin],
            input=yaml.encode(),
            capture_output=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr.decode()
        return out.stdout.decode().strip()

    def delete(self, workflow: str) -> None:
        subprocess.run(
            [self.agent_bin, "delete", workflow, "--admin", self.admin],
            capture_output=True,
            check=True,
        )

    def status(self) -> dict:
        out = subprocess.run(
            [self.agent_bin, "status", "--json", "--admin", self.admin],
            capture_output=True,
            check=True,
        )
        return json.loads(out.stdout)

    def wait_streaming(self, name: str, limit: float = 60.0) -> None:
        """Until channel `name` is paired and bytes have moved."""
        deadline = time.monotonic() + limit
        while True:
            for channel in self.status()["channels"]:
                if channel["name"] == name and channel["state"] == "active" and channel["bytes"] > 0:
                    return
            assert time.monotonic() < deadline, f"channel {name} never started streaming"
            time.sleep(0.05)

    def channel(self, name: str, limit: float = 30.0) -> dict:
        """The finished channel `name` (newest), once it is."""
        deadline = time.monotonic() + limit
        while True:
            for channel in self.status()["channels"]:
                if channel["name"] == name and channel["state"] in ("done", "failed"):
                    return channel
            assert time.monotonic() < deadline, f"channel {name} never finished"
            time.sleep(0.05)


@dataclass
class Result:
    """What a peer process printed and how it exited."""

    code: int
    report: dict
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.report.get("ok", False)


def finish(process: subprocess.Popen, limit: float = 120.0) -> Result:
    """Waits for a peer process; its last stdout line is its JSON report."""
    try:
        stdout, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"peer hung: {stderr.decode()}")
    lines = [line for line in stdout.decode().splitlines() if line.strip()]
    report = json.loads(lines[-1]) if lines else {}
    return Result(process.returncode, report, stderr.decode())


def _require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "the Python tests start real agents that load eBPF programs: run as root"
    if os.environ.get("CI") in ("true", "1"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Dict[str, Node]]:
    """Two nodes, `node-a` and `node-b`, an agent in each."""
    _require_root()
    lab = _lab_binary()
    assert lab.is_file(), f"{lab} missing: build it (cargo xtask test does) or set FLOKI_LAB_BIN"
    process = subprocess.Popen(
        [str(lab), "cluster", "--nodes", "node-a,node-b"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    line = process.stdout.readline()
    assert line, "floki-lab cluster exited before describing its nodes"
    description = json.loads(line)
    nodes = {
        node["name"]: Node(
            name=node["name"],
            ip=node["ip"],
            netns=node["netns"],
            cgroup=node["cgroup"],
            tcp=node["tcp"],
            unix=node["unix"],
            admin=node["admin"],
            agent_bin=description["agent_bin"],
        )
        for node in description["nodes"]
    }
    for node in description["nodes"]:
        assert node["datapath"] == "ebpf", f"{node['name']}: datapath {node['datapath']}"
    try:
        yield nodes
    finally:
        process.stdin.close()
        process.wait(timeout=60)


@pytest.fixture
def node(cluster: Dict[str, Node]) -> Node:
    """One node for same-node channels."""
    return cluster["node-a"]


@pytest.fixture(autouse=True)
def fresh_connections() -> Iterator[None]:
    """Each test starts as a new process would: without the connections and
    rings the tests before it kept (a kept ring serves any channel between
    the same two ends, so a test's first stream would take one up)."""
    import floki

    floki.close_kept_connections()
    yield


_counter = iter(range(1_000_000))


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> str:
    """A fresh channel name per test."""
    return f"py-{request.node.name[:40]}-{next(_counter)}".replace("[", "-").replace("]", "")
