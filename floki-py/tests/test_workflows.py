"""Workflow edges across two namespace nodes, from Python functions that
take their place from the environment (FLOKI_WORKFLOW, FLOKI_FUNCTION,
FLOKI_TOKEN, FLOKI_AGENT), as a platform would start them."""

from __future__ import annotations

import itertools

import pytest

from conftest import finish

MIB = 1 << 20
_names = itertools.count()

PATTERNS = {
    # pattern: (producers, consumers), each a (function, node)
    "one-to-one": ([("p0", "node-a")], [("c0", "node-b")]),
    "broadcast": ([("p0", "node-a")], [("c0", "node-a"), ("c1", "node-b")]),
    "gather": ([("p0", "node-a"), ("p1", "node-b")], [("c0", "node-b")]),
    "shuffle": (
        [("p0", "node-a"), ("p1", "node-b")],
        [("c0", "node-a"), ("c1", "node-b")],
    ),
}


def spec(name: str, pattern: str) -> str:
    producers, consumers = PATTERNS[pattern]
    functions = "".join(
        f"    - {{ name: {function}, node: {node} }}\n"
        for function, node in producers + consumers
    )
    return (
        "apiVersion: floki.dev/v1\nkind: Workflow\n"
        f"metadata:\n  name: {name}\nspec:\n  functions:\n{functions}"
        "  edges:\n    - name: data\n"
        f"      from: [{', '.join(f for f, _ in producers)}]\n"
        f"      to: [{', '.join(f for f, _ in consumers)}]\n"
        f"      pattern: {pattern}\n      buffer: 4MiB\n"
    )


def env(workflow: str, function: str, token: str, agent: str) -> dict:
    return {
        "FLOKI_WORKFLOW": workflow,
        "FLOKI_FUNCTION": function,
        "FLOKI_TOKEN": token,
        "FLOKI_AGENT": agent,
    }


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("door", ["unix", "tcp"])
def test_every_pattern_across_two_nodes(cluster, pattern, door):
    workflow = f"py-{pattern}-{door}-{next(_names)}"
    token = cluster["node-a"].apply(spec(workflow, pattern))
    producers, consumers = PATTERNS[pattern]
    agent = lambda node: getattr(cluster[node], door)  # noqa: E731
    # On the Unix socket the functions move their streams all at once
    # (Edge.send_all, Edge.receive_all); on TCP one stream at a time.
    together = ["--all"] if door == "unix" else []
    started = {}
    for function, node in consumers:
        started[function] = cluster[node].python(
            "edge-recv", "--edge", "data", "--timeout", "60", *together,
            env=env(workflow, function, token, agent(node)),
        )
    for i, (function, node) in enumerate(producers):
        started[function] = cluster[node].python(
            "edge-send", "--edge", "data", "--bytes", str(3 * MIB + i), "--data-seed", str(10 * i),
            "--timeout", "60", *together,
            env=env(workflow, function, token, agent(node)),
        )
    results = {function: finish(process) for function, process in started.items()}
    for function, result in results.items():
        assert result.ok, (function, result)
        assert result.report["pattern"] == pattern
    # Every consumer got, from every producer, exactly what it sent to it.
    for consumer, _ in consumers:
        received = results[consumer].report["digests"]
        assert sorted(received) == sorted(p for p, _ in producers)
        for producer, digest in received.items():
            assert results[producer].report["digests"][consumer] == digest, (producer, consumer)
    cluster["node-a"].delete(workflow)


def test_a_wrong_token_is_refused_like_an_unknown_workflow(cluster):
    workflow = f"py-token-{next(_names)}"
    token = cluster["node-a"].apply(spec(workflow, "one-to-one"))
    node = cluster["node-a"]
    answers = []
    for name, secret in [(workflow, token[::-1]), ("no-such-workflow", token)]:
        result = finish(
            node.python(
                "edge-send", "--edge", "data", "--bytes", "10",
                env=env(name, "p0", secret, node.unix),
            )
        )
        assert not result.ok
        answers.append((result.report["error"], result.report["message"].replace(name, "W")))
    assert answers[0] == answers[1], answers
    assert answers[0][0] == "NotAllowedError"
    node.delete(workflow)


def test_send_all_needs_a_part_for_every_consumer(cluster):
    """A shuffle producer that gives no part for a consumer gets a clear
    error, and its streams are aborted rather than left open."""
    import floki

    workflow = f"py-parts-{next(_names)}"
    token = cluster["node-a"].apply(spec(workflow, "shuffle"))
    edge = floki.Edge(
        "data", workflow=workflow, function="p0", token=token,
        agent=cluster["node-a"].unix, timeout=30, live=True,
    )
    with pytest.raises(ValueError) as missing:
        edge.send_all({"c0": b"part for c0"})
    assert "no data for consumer(s) c1 of edge 'data'" in str(missing.value)
    cluster["node-a"].delete(workflow)
