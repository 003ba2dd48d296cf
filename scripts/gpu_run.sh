#!/usr/bin/env bash
# The GPU run in one command (README "GPU"): the headline figures within 8 minutes on one H200.
#
#   bash scripts/gpu_run.sh OUT              # on the GPU machine
#   bash scripts/gpu_run.sh --dry-run OUT    # anywhere: the plan with a time estimate per section
#   bash scripts/gpu_run.sh OUT --sections long --budget 200    # rerun some sections
#
# First the fla-core wheel carried under .whl/ (git-ignored; README says how to fetch it) goes into
# a private folder, with pip and no network (with any other wheel carried there: the GPU machine
# has einops, fla-core's one dependency, so the fla-core wheel alone is enough); then
# scripts/gpu_run.py does the rest (its docstring: the sections, budgets, outputs). Every argument
# is passed on to it. Environment: PYTHON (default python3), GPU_RUN_SITE (where the wheel is
# installed, default /tmp/yoco-gpu-site), and gpu_run.py's GPU_RUN_BUDGET_S and GPU_RUN_DEVICE.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SITE="${GPU_RUN_SITE:-/tmp/yoco-gpu-site}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

dry_run=0
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && dry_run=1; done

wheels=("$REPO"/.whl/fla_core-*.whl)
if "$PYTHON" -c "import fla" 2>/dev/null; then
  note="fla-core: already importable here ($("$PYTHON" -c "import importlib.metadata as m; print(m.version('fla-core'))" 2>/dev/null))"
elif [[ ! -e "${wheels[0]}" ]]; then
  note="fla-core: no wheel under .whl/ (carry it: README \"GPU\"): the yoco-gret cases that ask for fla are skipped"
elif (( dry_run )); then
  note="fla-core: ${wheels[0]#$REPO/} would be installed"
elif "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
       "$REPO"/.whl/*.whl >&2; then
  export PYTHONPATH="$SITE:$PYTHONPATH"
  if "$PYTHON" -c "import fla.ops.simple_gla" 2>/dev/null; then
    note="fla-core: installed from ${wheels[0]#$REPO/} into $SITE"
  else
    note="fla-core: installed from ${wheels[0]#$REPO/} but does not import (einops missing?): the yoco-gret cases that ask for fla are skipped"
  fi
else
  note="fla-core: pip could not install ${wheels[0]#$REPO/}: the yoco-gret cases that ask for fla are skipped"
fi
echo "$note" >&2
export GPU_RUN_FLA_NOTE="$note"
exec "$PYTHON" "$REPO/scripts/gpu_run.py" "$@"
