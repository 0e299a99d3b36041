#!/usr/bin/env bash
# `make test` after `make install`:
#   1. lint and mypy, and beside them everything the real node needs (`voicefleet-cluster
#      build --node`: the Go binaries, kube-router, the images, loaded into the node's
#      containerd). Seconds when cached. On a fresh machine the builds take most of the
#      run's first 15 minutes and get both cores, instead of sharing them with tests.
#   2. the suite as two pytest processes side by side, one per core:
#      - the cluster stream: every test marked `cluster` (local control plane, real node,
#        and the e2e tests, which run the chart or `make up` on this host's one node), one
#        at a time, printed live;
#      - the other stream: unit and single-server integration tests, and the tests marked
#        `nodeless` on a control plane of its own (no node), printed when done.
#      promtool and SeaweedFS build beside them when not cached (minutes, fresh machine
#      only); each stream runs their tests last and waits for them if need be.
# pytest-xdist's loadgroup did not keep the cluster tests on one worker (they ran on
# both, and the real node, one per host, collided); two processes make the split exact.
# Each prints its slowest tests (--durations), so a CI log says where the time went.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
started=$(date +%s)

echo "== lint and types, and beside them the real node's binaries and images (cached after the first run) =="
setsid "$bin/voicefleet-cluster" build --node &  # its own process group: killed whole below
build_pid=$!
make --no-print-directory lint typecheck
checks_rc=$?
if [ "$checks_rc" -ne 0 ]; then
  kill -- "-$build_pid" 2>/dev/null
  wait "$build_pid" 2>/dev/null
  echo "make test: lint or mypy failed (exit $checks_rc); no tests run"
  exit "$checks_rc"
fi
wait "$build_pid"
build_rc=$?
echo "== checks and builds done in $(( $(date +%s) - started ))s (build exit $build_rc; on a failure the cluster stream tries again and reports it) =="

# promtool (the alert-rule tests) and SeaweedFS (the S3 server of the model-fetch tests)
# build beside both streams at a lower priority, and the tests that need them run last in
# each; they wait for them if they are not done.
setsid nice -n 10 "$bin/voicefleet-cluster" build --promtool --seaweedfs >/dev/null &
weed_pid=$!
export VOICEFLEET_SEAWEEDFS_BESIDE=1

other_log=$(mktemp -t voicefleet-tests.XXXXXX)
"$bin/pytest" -q -ra --durations=15 -m "not cluster" "$@" >"$other_log" 2>&1 &
other_pid=$!
echo "== cluster and end-to-end tests (the other tests run alongside; their output follows) =="
ready=0
[ "$build_rc" -eq 0 ] && ready=1  # else the cluster stream builds again and reports why
VOICEFLEET_NODE_PARTS_READY=$ready "$bin/pytest" -q -ra --durations=25 -m cluster "$@"
cluster_rc=$?
wait "$other_pid"
other_rc=$?
kill -- "-$weed_pid" 2>/dev/null  # still building only when no selected test needed it
echo
echo "== unit and single-server integration tests (exit $other_rc) =="
cat "$other_log"
rm -f "$other_log"
echo
echo "make test: cluster stream exit $cluster_rc, other stream exit $other_rc, $(( $(date +%s) - started ))s"
[ "$cluster_rc" -eq 0 ] && [ "$other_rc" -eq 0 ]
