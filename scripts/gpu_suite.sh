#!/usr/bin/env bash
# The whole GPU run in one command, within a time budget (default 25 min), offline:
#
#   scripts/gpu_suite.sh OUT_DIR            # on a CUDA machine
#   scripts/gpu_suite.sh --dry-run OUT_DIR  # anywhere: list the suites' cases, measure nothing
#
# Steps, each with its share of the budget and its log under OUT_DIR/logs/:
#   1. environment: GPU, driver, torch, optional backends (nvidia-smi, yoco.backends.detect);
#   2. tests: `pytest -m "not slow"` (CUDA cases run where tests parametrize over DEVICES),
#      then the slow tests whose id names cuda;
#   3. `python -m bench run --suite gpu-quick` -> OUT_DIR/gpu-quick/ (the targets' cases first);
#   4. `python -m bench run --suite paper`     -> OUT_DIR/paper/ (whatever time is left);
#   5. scripts/check_targets.py over both runs -> OUT_DIR/targets.txt (+ targets.json).
# A step stopped by its budget leaves the rows it finished (results.csv is written case by
# case), gets plots and summary.md drawn from them, and is marked PARTIAL in OUT_DIR/STATUS.md
# with the command that finishes it. Nothing here writes a number the harness did not measure.
# Exit status: 0 when every step ran (PARTIAL included), 1 when one failed, 2 on bad usage.
#
# Environment: PYTHON (default python3), GPU_SUITE_BUDGET_S (1500), GPU_SUITE_TESTS_S (240; 0
# skips the tests), GPU_SUITE_QUICK_S (600: the most any suite but the last may take),
# GPU_SUITE_RESERVE_S (90: kept for plots and the target check), GPU_SUITE_SUITES
# ("gpu-quick paper"), PAPER_REPEATS (3: more cases in the budget; "suite" keeps the suite's),
# GPU_SUITE_DEVICE (cuda; "cpu" only to check this script's plumbing on a machine without a
# GPU: its figures are CPU figures, and check_targets counts none of them).
set -uo pipefail

usage() { echo "usage: $0 [--dry-run] OUT_DIR" >&2; exit 2; }
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
[[ $# -eq 1 && -n "$1" ]] || usage

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BUDGET_S="${GPU_SUITE_BUDGET_S:-1500}"
TESTS_S="${GPU_SUITE_TESTS_S:-240}"
QUICK_S="${GPU_SUITE_QUICK_S:-600}"
SUITES="${GPU_SUITE_SUITES:-gpu-quick paper}"
PAPER_REPEATS="${PAPER_REPEATS:-3}"
RESERVE_S="${GPU_SUITE_RESERVE_S:-90}"
DEVICE="${GPU_SUITE_DEVICE:-cuda}"

[[ "$DEVICE" == "cuda" || "$DEVICE" == "cpu" ]] || { echo "error: GPU_SUITE_DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2; }
for n in "$BUDGET_S" "$TESTS_S" "$QUICK_S" "$RESERVE_S"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "error: budgets must be whole seconds, got '$n'" >&2; exit 2; }
done
if [[ "$PAPER_REPEATS" != "suite" && ! "$PAPER_REPEATS" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: PAPER_REPEATS must be an integer >= 1 or 'suite', got '$PAPER_REPEATS'" >&2; exit 2
fi
for suite in $SUITES; do
  if [[ -e "$1/$suite/results.csv" ]]; then
    echo "error: $1/$suite already holds a run: use a new OUT_DIR, or finish it with" \
         "python -m bench run --resume $1/$suite" >&2
    exit 2
  fi
done

mkdir -p "$1" || { echo "error: cannot create OUT_DIR $1" >&2; exit 2; }
OUT="$(cd "$1" && pwd)"
LOGS="$OUT/logs"
STATUS="$OUT/STATUS.md"
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS"
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOGS/gpu_suite.log" >&2; }
FAILED=0
status() { echo "$*" >> "$STATUS"; if [[ "$*" == *FAILED* ]]; then FAILED=1; fi; }
left() { echo $((DEADLINE - $(date +%s))); }

# Run "$@" in its own process group for at most $1 seconds; on time-out stop the whole group
# (the harness's case processes included, so none keeps the GPU). Returns 124 on time-out.
run_for() {
  local seconds=$1; shift
  if (( seconds <= 0 )); then return 124; fi
  setsid "$@" &
  local pid=$!
  local flag="$LOGS/.timeout.$pid"
  ( sleep "$seconds"; touch "$flag"; kill -TERM -- -"$pid" 2>/dev/null; sleep 20
    kill -KILL -- -"$pid" 2>/dev/null ) &
  local watchdog=$!
  wait "$pid"; local rc=$?
  kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null
  if [[ -e "$flag" ]]; then rm -f "$flag"; return 124; fi
  return "$rc"
}

: > "$STATUS"
status "# GPU suite run"
status ""
status "- started $(date -u +%Y-%m-%dT%H:%M:%SZ) on $DEVICE, budget ${BUDGET_S}s, commit $(git rev-parse HEAD 2>/dev/null || echo '?')"

# ---- 1. environment ----
{
  echo "## nvidia-smi"; nvidia-smi 2>&1 || echo "(nvidia-smi not available)"
  echo "## python"; "$PYTHON" - <<'EOF' 2>&1
import importlib.metadata as md, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", torch.cuda.get_device_name(0), f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}")
from yoco import backends
print("optional backends", backends.detect())
from baselines import hf_llama
print("hf-llama (transformers) available:", hf_llama.available())
for dist in ("transformers", "pytest", "numpy", "pandas", "matplotlib", "nvidia-ml-py"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "not installed")
EOF
} > "$LOGS/00-environment.log" 2>&1 &
ENV_PID=$!  # in the background: it imports every optional backend (seconds); no step needs it

if (( ! DRY_RUN )) && [[ "$DEVICE" == "cuda" ]]; then
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    log "error: no CUDA GPU visible to $PYTHON: nothing measured (see $LOGS/00-environment.log)"
    status "- FAILED: no CUDA GPU visible; nothing was measured"
    wait "$ENV_PID"
    exit 1
  fi
fi

# ---- 2. tests ----
if (( DRY_RUN || TESTS_S == 0 )); then
  status "- tests: not run ($( ((DRY_RUN)) && echo 'dry run' || echo 'GPU_SUITE_TESTS_S=0'))"
elif ! "$PYTHON" -m pytest --version > /dev/null 2>&1; then
  log "pytest is not installed: tests skipped"
  status "- tests: NOT RUN (pytest is not installed)"
else
  log "tests: pytest -m 'not slow' (budget ${TESTS_S}s)"
  run_for "$TESTS_S" "$PYTHON" -m pytest -m "not slow" -q -rs --durations=15 > "$LOGS/10-pytest.log" 2>&1
  rc=$?
  summary=$(tail -n 1 "$LOGS/10-pytest.log")
  case $rc in
    0) status "- tests (not slow): passed: $summary" ;;
    124) status "- tests (not slow): STOPPED after ${TESTS_S}s (budget); see logs/10-pytest.log" ;;
    *) status "- tests (not slow): FAILED (exit $rc): $summary; see logs/10-pytest.log" ;;
  esac
  remaining=$((TESTS_S - ($(date +%s) - START)))
  if (( remaining > 30 )); then
    run_for "$remaining" "$PYTHON" -m pytest -m slow -k cuda -q -rs > "$LOGS/11-pytest-slow-cuda.log" 2>&1
    rc=$?
    summary=$(tail -n 1 "$LOGS/11-pytest-slow-cuda.log")
    case $rc in
      0) status "- tests (slow, cuda): passed: $summary" ;;
      5) status "- tests (slow, cuda): none selected" ;;
      124) status "- tests (slow, cuda): STOPPED (budget); see logs/11-pytest-slow-cuda.log" ;;
      *) status "- tests (slow, cuda): FAILED (exit $rc): $summary; see logs/11-pytest-slow-cuda.log" ;;
    esac
  fi
fi

# ---- 3, 4. the suites ----
# Draw plots and summary.md from whatever rows a stopped run left.
finish_partial() {
  "$PYTHON" - "$1" <<'EOF'
import json, sys
from pathlib import Path
from bench.cli import finish
run = Path(sys.argv[1])
finish(run, json.loads((run / "env.json").read_text()), quiet=True)
EOF
}

RUN_DIRS=()
suites=($SUITES)
for i in "${!suites[@]}"; do
  suite=${suites[$i]}
  args=(--suite "$suite" --device "$DEVICE")
  if [[ "$suite" == "paper" && "$PAPER_REPEATS" != "suite" ]]; then args+=(--repeats "$PAPER_REPEATS"); fi
  log_file="$LOGS/2$i-$suite.log"
  if (( DRY_RUN )); then
    "$PYTHON" -m bench run "${args[@]}" --dry-run > "$log_file" 2>&1
    rc=$?
    status "- $suite: dry run, exit $rc: $(head -n 1 "$log_file") (logs/$(basename "$log_file"))"
    log "$suite dry run: exit $rc"
    continue
  fi
  # the last suite takes what is left; the ones before it their own share at most
  budget=$(( $(left) - RESERVE_S ))
  if (( i < ${#suites[@]} - 1 && QUICK_S < budget )); then budget=$QUICK_S; fi
  log "$suite: python -m bench run ${args[*]} --out $OUT/$suite (budget ${budget}s)"
  run_for "$budget" "$PYTHON" -m bench run "${args[@]}" --out "$OUT/$suite" > "$log_file" 2>&1
  rc=$?
  if [[ -s "$OUT/$suite/results.csv" ]]; then RUN_DIRS+=("$OUT/$suite"); fi
  done_cases=$( [[ -s "$OUT/$suite/results.csv" ]] && "$PYTHON" -c "import csv,sys; print(sum(1 for _ in csv.DictReader(open(sys.argv[1]))))" "$OUT/$suite/results.csv" || echo 0)
  case $rc in
    0) status "- $suite: complete, $done_cases cases -> $suite/ (results.csv, samples.csv, env.json, summary.md, plots/)" ;;
    124)
      if [[ -s "$OUT/$suite/results.csv" ]]; then finish_partial "$OUT/$suite" >> "$log_file" 2>&1; fi
      status "- $suite: PARTIAL: stopped by the time budget (${budget}s) after $done_cases cases; plots and" \
             "summary.md drawn from those. Finish with: python -m bench run --resume $OUT/$suite" ;;
    *) status "- $suite: FAILED (exit $rc) after $done_cases cases; see logs/$(basename "$log_file")" ;;
  esac
  log "$suite: exit $rc, $done_cases cases"
done

# ---- 5. targets ----
if (( ${#RUN_DIRS[@]} )); then
  "$PYTHON" scripts/check_targets.py "${RUN_DIRS[@]}" --json "$OUT/targets.json" > "$OUT/targets.txt" 2> "$LOGS/40-targets.log"
  status "- targets: $(tail -n 1 "$OUT/targets.txt") (targets.txt)"
else
  status "- targets: not checked (no run produced rows)"
fi
wait "$ENV_PID"
log "environment -> $LOGS/00-environment.log"
status "- finished $(date -u +%Y-%m-%dT%H:%M:%SZ) after $(( $(date +%s) - START ))s"
log "done in $(( $(date +%s) - START ))s: $STATUS"
cat "$STATUS"
exit "$FAILED"  # 1 if a step failed; a run stopped by the budget (PARTIAL) is not a failure
