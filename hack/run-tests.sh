#!/usr/bin/env bash
# `make test`: the suite as two pytest processes side by side, one per core.
#   - the cluster stream: every test marked `cluster` (local control plane, real node,
#     and the e2e tests, which run the chart or `make up` on this host's one node), one
#     at a time, printed live;
#   - the other stream: unit and single-server integration tests, printed when done.
# pytest-xdist's loadgroup did not keep the cluster tests on one worker (they ran on
# both, and the real node, one per host, collided); two processes make the split exact.
# Each prints its slowest tests (--durations), so a CI log says where the time went.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
other_log=$(mktemp -t voicefleet-tests.XXXXXX)
"$bin/pytest" -q -ra --durations=15 -m "not cluster" "$@" >"$other_log" 2>&1 &
other_pid=$!
echo "== cluster and end-to-end tests (the other tests run alongside; their output follows) =="
"$bin/pytest" -q -ra --durations=25 -m cluster "$@"
cluster_rc=$?
wait "$other_pid"
other_rc=$?
echo
echo "== unit and single-server integration tests (exit $other_rc) =="
cat "$other_log"
rm -f "$other_log"
echo
echo "make test: cluster stream exit $cluster_rc, other stream exit $other_rc"
[ "$cluster_rc" -eq 0 ] && [ "$other_rc" -eq 0 ]
