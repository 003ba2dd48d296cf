#!/usr/bin/env bash
# CI step: fail on a performance regression of the working tree, measured in this job
# (bench/judge/gate.py), against the merge base with main: a slowdown that creeps in over several
# commits of a branch is still caught. Where there is no main (or HEAD is main's tip), against
# HEAD~1. Skips cleanly (exit 0, with a message) on the first commit, in a shallow clone without
# the base, or when the base has no bench or no such suite.
# Usage: .ci/gate.sh [extra `python -m bench gate` options]; GATE_BASE, GATE_SUITE override.
set -euo pipefail
cd "$(dirname "$0")/.."

base_revision() {
    local main head base
    head=$(git rev-parse --verify --quiet HEAD) || { echo HEAD~1; return; }
    for main in main origin/main; do
        if git rev-parse --verify --quiet "$main^{commit}" >/dev/null; then
            base=$(git merge-base HEAD "$main" 2>/dev/null) || continue
            if [ "$base" != "$head" ]; then
                echo "$base"
                return
            fi
        fi
    done
    echo HEAD~1
}

base="${GATE_BASE:-$(base_revision)}"
echo "gate: comparing with $base" >&2
exec "${PYTHON:-python}" -m bench gate --base "$base" --suite "${GATE_SUITE:-smoke}" "$@"
