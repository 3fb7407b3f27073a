#!/usr/bin/env bash
# Two Floki nodes on one machine: two network namespaces joined by a veth pair
# (private addresses that exist only inside them), an agent in each, and a
# workflow (examples/one-to-one.yaml) whose producer runs on node-a and whose
# consumer runs on node-b. Everything runs in a cgroup of its own and is
# removed at the end.
#
#   sudo examples/two-nodes.sh [SIZE]        # SIZE for head -c, default 256M
#
# FLOKI_AGENT_BIN picks the binary (default: target/release/floki-agent,
# built if missing).
set -euo pipefail

size=${1:-256M}
cd "$(dirname "$0")/.."
if [[ $EUID -ne 0 ]]; then
    echo "two-nodes.sh: run as root (network namespaces, cgroups, eBPF)" >&2
    exit 1
fi
bin=${FLOKI_AGENT_BIN:-target/release/floki-agent}
if [[ ! -x $bin ]]; then
    echo "== building floki-agent"
    cargo build --release -p floki-agent
fi
bin=$(realpath "$bin")

tag=floki-ex-$$
cgroup=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)/$tag
work=$(mktemp -d "/tmp/$tag.XXXX")
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$tag-a" 2>/dev/null || true
    ip netns del "$tag-b" 2>/dev/null || true
    rmdir "$cgroup" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Runs a command on a node: in the example's cgroup, in the node's namespace.
# It replaces the shell that runs it: call it in the background (`on ... &`,
# so that $! is the command itself and cleanup can stop it) or in a subshell.
on() {
    local node=$1
    shift
    echo "$BASHPID" >"$cgroup/cgroup.procs"
    exec nsenter --net="/var/run/netns/$tag-$node" -- "$@"
}

echo "== two nodes: namespaces $tag-a (10.213.0.1) and $tag-b (10.213.0.2)"
mkdir "$cgroup"
ip netns add "$tag-a"
ip netns add "$tag-b"
ip link add "fk$$a" type veth peer name "fk$$b"
ip link set "fk$$a" netns "$tag-a"
ip link set "fk$$b" netns "$tag-b"
ip -n "$tag-a" addr add 10.213.0.1/24 dev "fk$$a"
ip -n "$tag-b" addr add 10.213.0.2/24 dev "fk$$b"
for node in a b; do
    ip -n "$tag-$node" link set lo up
    ip -n "$tag-$node" link set "fk$$$node" up
done

# The agents prove to each other that they share this secret before any
# agent-to-agent request (docs/SECURITY.md); their own port is 7879.
head -c 32 /dev/urandom | base64 >"$work/cluster.secret"
chmod 600 "$work/cluster.secret"

start_agent() {
    local node=$1 peer=$2 peer_ip=$3
    mkdir -p "$work/$node"
    on "$node" "$bin" run --node "node-$node" --peer "node-$peer=$peer_ip:7879" \
        --cluster-secret-file "$work/cluster.secret" \
        --cgroup "$cgroup" --admin "$work/$node/agent.sock" --socket "$work/$node/floki.sock" \
        --pin-dir "/sys/fs/bpf/$tag-$node" >"$work/$node/agent.log" 2>&1 &
    pids+=("$!")
}
start_agent a b 10.213.0.2
start_agent b a 10.213.0.1
status() { "$bin" status --admin "$work/$1/agent.sock" "${@:2}"; }
for node in a b; do
    for _ in $(seq 100); do status "$node" --json >/dev/null 2>&1 && break; sleep 0.1; done
done

echo "== floki-agent apply examples/one-to-one.yaml (on node-a; node-b gets it too)"
token=$("$bin" apply examples/one-to-one.yaml --admin "$work/a/agent.sock")
# Proactive: the agents open the stream's link before any function runs.
for _ in $(seq 100); do
    status a --json | grep -q '"state": *"ready"' && break
    sleep 0.1
done
status a | sed -n '/^workflow/,$p'

echo "== $size from produce (node-a) to consume (node-b)"
head -c "$size" /dev/urandom >"$work/input"
edge=(--workflow hello --edge results --token "$token")
on b "$bin" recv "${edge[@]}" --as consume --agent "unix:$work/b/floki.sock" -o "$work/output" &
consumer=$!
(on a "$bin" send "${edge[@]}" --as produce --agent "unix:$work/a/floki.sock" "$work/input")
wait "$consumer"
cmp "$work/input" "$work/output"
echo "== received byte-identical"

echo "== status on node-a"
status a
echo "== status on node-b"
status b
