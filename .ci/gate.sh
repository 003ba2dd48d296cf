#!/usr/bin/env bash
# CI step: fail on a confirmed performance regression of the working tree against the previous
# commit, measured in this job (bench/judge/gate.py). Skips cleanly (exit 0, with a message) on the
# first commit, in a shallow clone without HEAD~1, or when HEAD~1 has no bench or no such suite.
# Usage: .ci/gate.sh [extra `python -m bench gate` options]; GATE_BASE, GATE_SUITE override.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m bench gate --base "${GATE_BASE:-HEAD~1}" --suite "${GATE_SUITE:-smoke}" "$@"
