"""scripts/gate_noise.py (raw or normalized? the A/A calibration) and scripts/gate_campaign.py's parts
that need no real gate (the plan of gates, the code change it plants, its verdict)."""

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_compare import CASES, write_run

from bench.judge import compare
from bench.measure import runner

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


noise_script = load("gate_noise")
campaign = load("gate_campaign")


def aa_runs(root, seed, machine_spread, runs=8):
    """Runs of identical code; each process's machine speed (program and calibration alike) varies."""
    rng = np.random.default_rng(seed)
    for i in range(runs):
        write_run(root / f"run-{i:02d}", rng, machine=math.exp(machine_spread * rng.standard_normal()), run_noise=0.01)
    return root


def test_noise_prefers_normalized_only_where_it_narrows_the_spread(tmp_path, capsys):
    # the whole machine's speed moves 15% between runs: the calibration sees it, normalizing removes it
    drifting = aa_runs(tmp_path / "drift", 0, 0.15)
    out = tmp_path / "noise.json"
    assert noise_script.main([str(drifting), "--write", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "judge on normalized" in printed and "8 runs" in printed
    stored = json.loads(out.read_text())
    assert stored["source"] == "normalized" and stored["suite"] == "smoke" and stored["runs"] == 8
    assert set(stored["spread"]) == {f"{c}/{m}" for c in CASES for m in ("prefill_ms", "decode_ms_per_step")}
    assert all(0 <= v < 0.1 for v in stored["spread"].values())
    assert compare.load_noise(out, "normalized") == stored["spread"]
    # a steady machine: the calibration's own noise only adds: raw
    steady = aa_runs(tmp_path / "steady", 1, 0.0)
    assert noise_script.main([str(tmp_path / "steady" / "run-00"), str(steady)]) == 0
    assert "judge on raw" in capsys.readouterr().out


def test_noise_needs_runs_of_one_suite(tmp_path, capsys):
    aa_runs(tmp_path / "a", 0, 0.0, runs=2)
    with pytest.raises(SystemExit):
        noise_script.main([str(tmp_path / "a")])
    assert "found 2 run directories" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    for i in range(3):
        write_run(tmp_path / "a" / f"other-{i}", rng, env={"suite": "default"})
    with pytest.raises(SystemExit, match="several suites"):
        noise_script.main([str(tmp_path / "a")])


def test_verdict_rule():
    rows = [{"raw": 0.10, "normalized": n} for n in (0.05, 0.08, 0.12)]
    assert noise_script.verdict(rows)[0] == "normalized"  # median ratio 0.8, 2 of 3 narrower
    rows = [{"raw": 0.10, "normalized": n} for n in (0.05, 0.095, 0.12)]
    assert noise_script.verdict(rows)[0] == "raw"  # median ratio 0.95
    assert noise_script.verdict([{"raw": 0.1, "normalized": math.nan}])[0] == "raw"


def test_campaign_plan_alternates_and_spreads_the_fast_gates():
    plan = campaign.schedule(20, 10, 2)
    assert (plan.count("aa"), plan.count("slow"), plan.count("fast")) == (20, 10, 2)
    assert plan[:4] == ["aa", "slow", "aa", "slow"]
    fast = [i for i, k in enumerate(plan) if k == "fast"]
    assert 5 < fast[0] < fast[1] < len(plan) - 5
    assert campaign.schedule(1, 1, 0) == ["aa", "slow"]


def test_campaign_plants_one_line_of_the_runner(tmp_path):
    source = Path(runner.__file__).read_text()
    assert source.count(campaign.HOOK_LINE) == 1  # the line the campaign changes is still there
    tree = tmp_path / "tree"
    (tree / campaign.HOOK_FILE).parent.mkdir(parents=True)
    (tree / campaign.HOOK_FILE).write_text(source)
    campaign.plant(tree, "case-a", 1.25)
    changed = (tree / campaign.HOOK_FILE).read_text()
    assert 'TEST_SLOW_DECODE = "case-a:1.25"' in changed
    assert len(changed.splitlines()) == len(source.splitlines())
    with pytest.raises(SystemExit, match="expected exactly one line"):
        campaign.plant(tree, "case-a", 1.25)


def test_campaign_verdict_counts_what_the_issue_asks():
    case, metric = "c1", campaign.METRIC
    rows = [dict(kind="aa", exit=0, seconds=200, failing="", target_status="unchanged"),
            dict(kind="aa", exit=1, seconds=220, failing="c2 prefill_ms", target_status="unchanged"),
            dict(kind="slow", exit=1, seconds=300, failing=f"{case} {metric}", target_status="regressed"),
            dict(kind="slow", exit=1, seconds=310, failing=f"c2 prefill_ms; {case} {metric}",
                 target_status="regressed"),
            dict(kind="slow", exit=1, seconds=290, failing="c2 prefill_ms", target_status="unchanged"),
            dict(kind="fast", exit=0, seconds=180, failing="", target_status="improved")]

    class Args:
        slowdown, speedup = 1.25, 0.25

    Args.case = case
    text = campaign.verdict(rows, Args)
    assert "A/A (identical code): 1 of 2 failed" in text
    assert f"2 of 3 failed naming it and {metric}" in text and "other timings failed in 2" in text
    assert "1 of 1 reported improved with exit 0" in text
    assert "longest gate: 310 s (target: <= 360 s)" in text


def test_campaign_appends_only_to_gates_of_the_same_code_and_options(tmp_path):
    setup = dict(code=campaign.code_trees(), suite="smoke", case="c1", slowdown=1.25, speedup=0.25, gate_args=[])
    assert campaign.previous_rows(tmp_path, setup) == []  # nothing yet: a new campaign
    rows = [dict(n=0, commit="abc", kind="aa", exit=0, seconds=200.5, failing=""),
            dict(n=1, commit="abc", kind="slow", exit=1, seconds=300, failing="c1 decode_ms_per_step")]
    with open(tmp_path / "campaign.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(SystemExit, match="campaign.json is missing"):
        campaign.previous_rows(tmp_path, setup)
    (tmp_path / "campaign.json").write_text(json.dumps(setup))
    again = campaign.previous_rows(tmp_path, setup)
    assert [(r["kind"], r["exit"], r["seconds"]) for r in again] == [("aa", 0, 200.5), ("slow", 1, 300.0)]
    other = {**setup, "code": {**setup["code"], "bench": "0" * 40}, "gate_args": ["--runs", "7"]}
    with pytest.raises(SystemExit, match="other code, gate_args"):
        campaign.previous_rows(tmp_path, other)
