"""`bench compare` on synthetic run directories written here (the same files `bench run` writes).

The synthetic runs carry real noise: each process has its own luck per case (between-run spread),
each sample its own jitter, and the calibration its own, independent of the value's, so the
normalized samples are noisier than the raw ones, as on a real machine. Memory has the process's
own overhead varying between runs, and the model's share varying a little.
"""

import argparse
import csv
import json
import math
import shutil

import numpy as np
import pytest

from bench import cli
from bench.judge import compare, gate, stats

CASES = ("yoco-gret-tiny-b1-s128", "yoco-swa-tiny-b1-s128", "transformer-tiny-b1-s128")
TIMINGS = {"prefill_ms": 20.0, "decode_ms_per_step": 2.0}
FIXED = {"kv_cache_bytes": 65536, "weight_bytes": 4_000_000, "params": 1_000_000}
SHARE = {"peak_mem_prefill_bytes": 12_000_000, "peak_mem_decode_bytes": 13_000_000}  # the model's own bytes
OVERHEAD = 250_000_000  # Python and torch: the RSS before the model is built
RESULT_COLUMNS = ["case_id", "arch", "device", "prefill_ms", "decode_ms_per_step", "decode_tok_s", *FIXED, *SHARE,
                  "mem_before_model_bytes", "status", "error"]


def write_run(path, rng, *, machine=1.0, luck=None, scale=None, fixed=None, share=None, cases=CASES, status=None,
              env=None, run_noise=0.04, repeats=9, outliers=None):
    """One process run.
    machine: slows program and calibration alike; luck {case: factor}: this process's luck for a
    case (default log-normal, run_noise); scale {(case, metric): factor}: slows only the program;
    fixed {(case, column): value}; share {(case, column): bytes}: the model's own peak memory;
    outliers {(case, metric): (k, factor)}: the first k repeats that much slower (mean != median)."""
    path.mkdir(parents=True)
    scale, fixed, share, status, outliers = scale or {}, fixed or {}, share or {}, status or {}, outliers or {}
    luck = luck or {c: math.exp(run_noise * rng.standard_normal()) for c in cases}
    medians = {}
    with open(path / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "metric", "repeat", "value", "calibration_ms", "normalized"])
        for case in cases:
            for metric, center in TIMINGS.items():
                values = []
                for repeat in range(repeats):
                    calibration = 5.0 * machine * math.exp(0.03 * rng.standard_normal())  # its own noise
                    value = (center * scale.get((case, metric), 1.0) * machine * luck[case]
                             * math.exp(0.01 * rng.standard_normal()))
                    k, factor = outliers.get((case, metric), (0, 1.0))
                    value *= factor if repeat < k else 1.0
                    values.append(value)
                    w.writerow([case, metric, repeat, value, calibration, value / calibration])
                medians[case, metric] = float(np.median(values))
    overhead = OVERHEAD + rng.normal(0, 2_000_000)  # the interpreter's RSS moves between runs
    with open(path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RESULT_COLUMNS)
        for case in cases:
            decode = medians[case, "decode_ms_per_step"]
            row = {"case_id": case, "arch": case.split("-tiny")[0], "device": "cpu",
                   "prefill_ms": medians[case, "prefill_ms"], "decode_ms_per_step": decode,
                   "decode_tok_s": 1e3 / decode, "status": status.get(case, "ok"), "error": "",
                   "mem_before_model_bytes": round(overhead)}
            row.update({k: fixed.get((case, k), v) for k, v in FIXED.items()})
            for column, bytes_ in SHARE.items():
                mine = share.get((case, column), bytes_) + rng.normal(0, 20_000)
                row[column] = round(overhead + mine)
            if row["status"] != "ok":
                row.update(error="RuntimeError: boom", prefill_ms="", decode_ms_per_step="")
            w.writerow([row[c] for c in RESULT_COLUMNS])
    info = {"suite": "smoke", "device": "cpu", "device_name": "test-cpu"}
    (path / "env.json").write_text(json.dumps({**info, **(env or {})}))
    return path


def write_side(root, seed, runs=7, **kwargs):
    rng = np.random.default_rng(seed)
    for i in range(runs):
        write_run(root / f"run-{i:02d}", rng, **kwargs)
    return root


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return compare.main(parser.parse_args([str(a) for a in argv]))


def statuses(comparison):
    return {(r.case_id, r.metric): r.status for r in comparison.rows}


def changed(comparison):
    return {k: s for k, s in statuses(comparison).items() if s != "unchanged"}


def row_of(comparison, case, metric):
    return next(r for r in comparison.rows if (r.case_id, r.metric) == (case, metric))


def judge(base, new, **options):
    return compare.compare_runs(compare.load_side(base), compare.load_side(new), compare.Options(**options))


def test_identical_code_is_unchanged(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    c = judge(base, new)
    assert changed(c) == {}
    assert len(c.rows) == len(CASES) * (len(TIMINGS) + len(FIXED) + len(SHARE))
    timing = [r for r in c.rows if r.metric in TIMINGS]
    assert all(r.basis == "runs" and r.runs == "7/7" and r.ratio_low < r.ratio < r.ratio_high for r in timing)
    assert all(0.9 < r.ratio < 1.1 and r.p > 0.01 for r in timing)
    assert run_cli(base, new) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith(f"OK: no regression ({len(c.rows)} unchanged)")
    # one line per case, nothing else but the closing line
    assert [line.split() for line in out.splitlines()[:-1]] == [[case, "7", "unchanged"] for case in CASES]


def test_planted_slowdown_of_one_decode_is_flagged(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    slow = (CASES[1], "decode_ms_per_step")
    new = write_side(tmp_path / "new", seed=1, scale={slow: 1.25})
    c = judge(base, new)
    assert changed(c) == {slow: "regressed"}
    row = row_of(c, *slow)
    assert row.ratio == pytest.approx(1.25, rel=0.05) and row.ratio_low < 1.25 < row.ratio_high
    assert row.base == pytest.approx(2.0, rel=0.05) and row.new == pytest.approx(2.5, rel=0.05)
    # 7 runs a side, one-sided, Holm over the 6 timings: complete separation gives 6 / C(14, 7)
    assert row.p == pytest.approx(6 / math.comb(14, 7)) and row.runs == "7/7" and row.basis == "runs"
    assert row.threshold == pytest.approx(max(0.05, stats.NOISE_FACTOR * c.evidence[slow].noise))
    assert run_cli(base, new) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"FAIL: regression (1 regressed, {len(c.rows) - 1} unchanged)"
    assert f"{CASES[1]}  (and 6 unchanged)" in out
    assert "  decode_ms_per_step      regressed" in out and "2.00 ms" in out and "x1.2" in out


def test_planted_speedup_is_an_improvement(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    fast = (CASES[0], "decode_ms_per_step")
    new = write_side(tmp_path / "new", seed=1, scale={fast: 0.75})
    c = judge(base, new)
    assert changed(c) == {fast: "improved"}
    assert row_of(c, *fast).ratio == pytest.approx(0.75, rel=0.05)
    assert row_of(c, *fast).p == pytest.approx(6 / math.comb(14, 7))
    assert run_cli(base, new) == 0
    assert "OK: no regression (1 improved" in capsys.readouterr().out


def test_a_slower_and_noisier_new_side_does_not_raise_its_own_bar(tmp_path):
    base = write_side(tmp_path / "base", seed=0, run_noise=0.01)
    slow = (CASES[2], "prefill_ms")
    rng = np.random.default_rng(5)
    for i in range(7):  # NEW's runs of that case spread over +-30% (IQR ~ 40%), all slower
        luck = {c: 1.0 for c in CASES}
        luck[CASES[2]] = 1.0 + 0.1 * i
        write_run(tmp_path / "new" / f"run-{i:02d}", rng, luck=luck, scale={slow: 1.25})
    c = judge(base, tmp_path / "new")
    assert stats.relative_spread([row for row in [1.25 * (1 + 0.1 * i) for i in range(7)]]) > 0.2
    assert statuses(c)[slow] == "regressed"
    assert row_of(c, *slow).threshold == pytest.approx(0.05)  # BASE's spread is 1%: min_effect rules


def test_raw_or_normalized_timings(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1, machine=1.6)  # program and calibration alike
    raw = judge(base, new, timing_source="raw")
    assert compare.TIMING_SOURCE == "normalized" and judge(base, new).timing_source == "normalized"
    assert raw.timing_source == "raw"
    assert {s for k, s in statuses(raw).items() if k[1] in TIMINGS} == {"regressed"}
    normalized = judge(base, new, timing_source="normalized")
    timing = [r for r in normalized.rows if r.metric in TIMINGS]
    assert {r.status for r in timing} == {"unchanged"}
    assert all(1.5 < r.new / r.base < 1.7 for r in timing)  # shown in ms, as measured
    assert all(0.9 < r.ratio < 1.1 for r in timing)  # judged over the calibration
    with pytest.raises(compare.UnusableInput, match="timing source 'scaled'"):
        judge(base, new, timing_source="scaled")


def test_normalized_source_needs_the_column(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    for run in new.iterdir():
        rows = list(csv.reader((run / "samples.csv").read_text().splitlines()))
        (run / "samples.csv").write_text("".join(",".join(r[:4]) + "\n" for r in rows))
    assert changed(judge(base, new, timing_source="raw")) == {}  # raw needs only `value`
    assert run_cli(base, new, "--timing-source", "normalized") == 2
    assert "no 'normalized' column" in capsys.readouterr().err


def test_the_median_of_each_run_not_its_mean(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    hiccup = (CASES[0], "prefill_ms")
    # NEW: two repeats in nine are 4x slower (a hiccup): the mean moves ~60%, the median does not
    new = write_side(tmp_path / "new", seed=1, outliers={hiccup: (2, 4.0)})
    assert changed(judge(base, new)) == {}
    # and a real 25% slowdown under BASE's hiccups: their means would hide it
    noisy_base = write_side(tmp_path / "noisy_base", seed=2, outliers={hiccup: (2, 4.0)})
    slow = write_side(tmp_path / "slow", seed=3, scale={hiccup: 1.25})
    c = judge(noisy_base, slow)
    assert changed(c) == {hiccup: "regressed"}
    assert row_of(c, *hiccup).base == pytest.approx(20.0, rel=0.05)


def test_holm_counts_every_timing_compared(tmp_path):
    # raw timings (the constructed order is of `value`): per-run medians with exactly three of
    # 49 pairs out of order: one-sided p = 7 / C(14, 7) = 0.002
    base_luck = [1.00, 1.04, 1.08, 1.12, 1.16, 1.20, 1.40]
    new_luck = [1.28, 1.32, 1.36, 1.44, 1.48, 1.52, 1.56]
    target = CASES[0]
    rng = np.random.default_rng(0)
    for side, lucks in (("base", base_luck), ("new", new_luck)):
        for i, x in enumerate(lucks):
            luck = {c: 1.0 + 0.05 * i for c in CASES}
            luck[target] = x
            write_run(tmp_path / side / f"run-{i:02d}", rng, luck=luck)
    key = (target, "decode_ms_per_step")
    one = judge(tmp_path / "base", tmp_path / "new", timing_source="raw", metrics=("decode_ms_per_step",),
                cases=(target,))
    assert row_of(one, *key).p == pytest.approx(7 / 3432)
    assert statuses(one)[key] == "regressed"
    # three timings: 3 x 0.002 = 0.006 < 0.01; six: 0.012, not significant
    three = judge(tmp_path / "base", tmp_path / "new", timing_source="raw", metrics=("decode_ms_per_step",))
    assert statuses(three)[key] == "regressed" and row_of(three, *key).p == pytest.approx(3 * 7 / 3432)
    six = judge(tmp_path / "base", tmp_path / "new", timing_source="raw")
    assert row_of(six, *key).p == pytest.approx(6 * 7 / 3432)
    assert statuses(six)[key] == "unchanged"
    # the gate's confirmation: a family as large as its first pass
    assert statuses(judge(tmp_path / "base", tmp_path / "new", timing_source="raw", metrics=("decode_ms_per_step",),
                          cases=(target,), family_size=6))[key] == "unchanged"


def test_a_noise_file_replaces_base_spread_in_the_bar(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0, run_noise=0.01)
    slow = (CASES[1], "decode_ms_per_step")
    new = write_side(tmp_path / "new", seed=1, run_noise=0.01, scale={slow: 1.12})
    assert changed(judge(base, new)) == {slow: "regressed"}
    noise = tmp_path / "noise.json"
    noise.write_text(json.dumps({"suite": "smoke", "spread": {f"{slow[0]}/{slow[1]}": 0.3}}))
    c = judge(base, new, noise=compare.load_noise(noise))
    assert changed(c) == {} and row_of(c, *slow).threshold == pytest.approx(0.15)
    assert run_cli(base, new, "--noise-file", noise) == 0
    capsys.readouterr()
    noise.write_text(json.dumps({"spread": {"x/y": -1}}))
    assert run_cli(base, new, "--noise-file", noise) == 2
    assert "spread of x/y is -1.0" in capsys.readouterr().err
    noise.write_text("[1, 2]")
    assert run_cli(base, new, "--noise-file", noise) == 2
    assert "not an A/A calibration" in capsys.readouterr().err


def test_one_run_a_side_is_inconclusive_never_ok(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0, runs=1)
    new = write_side(tmp_path / "new", seed=1, runs=1)
    c = judge(base, new)
    timing = [r for r in c.rows if r.metric in TIMINGS]
    assert {r.status for r in timing} == {"inconclusive"} and {r.basis for r in timing} == {"repeats"}
    assert {r.runs for r in timing} == {"9/9"}  # the repeats
    assert c.inconclusive and not c.failed and c.runs_needed == stats.runs_needed(0.01, 6) == 6
    assert all(r.threshold >= stats.FALLBACK_MIN_EFFECT for r in timing)
    assert run_cli(base, new) == 0
    out = capsys.readouterr().out
    assert "OK" not in out
    assert out.splitlines()[-1] == ("INCONCLUSIVE: too few runs to decide timings; 6 runs a side would decide "
                                    "(6 inconclusive, 15 unchanged)")
    words = " ".join(out.split())
    assert "judged on the repeats inside the runs" in words and "beyond 20% counts, and only as likely" in words


def test_one_run_a_side_hears_about_a_30_percent_slowdown(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0, runs=1)
    slow = (CASES[2], "decode_ms_per_step")
    new = write_side(tmp_path / "new", seed=1, runs=1, scale={slow: 1.3})
    c = judge(base, new)
    assert changed(c) == {**{k: "inconclusive" for k in statuses(c) if k[1] in TIMINGS}, slow: "likely regressed"}
    assert c.failed
    assert run_cli(base / "run-00", new / "run-00") == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("FAIL: likely regression (1 likely regressed, 5 inconclusive")
    assert run_cli(base, new, "--no-fail-likely") == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("INCONCLUSIVE: too few runs")
    faster = write_side(tmp_path / "faster", seed=1, runs=1, scale={slow: 0.7})
    assert statuses(judge(base, faster))[slow] == "likely improved"
    # 15% is within a process's luck: not even likely
    mild = write_side(tmp_path / "mild", seed=1, runs=1, scale={slow: 1.15})
    assert statuses(judge(base, mild))[slow] == "inconclusive"


def test_changed_kv_cache_bytes_fails_whatever_the_timings(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    case = CASES[2]
    new = write_side(tmp_path / "new", seed=1, fixed={(case, "kv_cache_bytes"): 65536 + 2},
                     scale={(case, "decode_ms_per_step"): 0.75})
    c = judge(base, new)
    assert statuses(c)[(case, "kv_cache_bytes")] == "regressed"
    assert statuses(c)[(case, "decode_ms_per_step")] == "improved"
    assert c.failed and run_cli(base, new) == 1
    assert compare.change(row_of(c, case, "kv_cache_bytes")) == "+2 B"
    # smaller is not better for an exact figure: it must match
    smaller = write_side(tmp_path / "smaller", seed=1, fixed={(case, "params"): 999})
    c = judge(base, smaller)
    assert statuses(c)[(case, "params")] == "regressed" and compare.change(row_of(c, case, "params")) == "-999,001"
    assert "must match exactly" in row_of(c, case, "params").note


def test_peak_memory_is_judged_on_the_model_share(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    case, metric = CASES[0], "peak_mem_decode_bytes"
    c = judge(base, write_side(tmp_path / "same", seed=1))
    row = row_of(c, case, metric)
    # the interpreter's RSS moved by ~2 MB between runs: not the model's doing
    assert row.status == "unchanged" and row.base == pytest.approx(13_000_000, abs=60_000)
    assert row.threshold == pytest.approx((0.02 * row.base + compare.MEMORY_SLACK_BYTES) / row.base)
    # 1 MB more of the model's own (7.7% of its share; 0.4% of the whole process)
    grown = write_side(tmp_path / "grown", seed=1, share={(case, metric): 14_000_000})
    row = row_of(judge(base, grown), case, metric)
    assert row.status == "regressed" and "beyond 2% + 256 KiB" in row.note
    assert compare.change(row).startswith("+") and " KiB (+7." in compare.change(row)
    shrunk = write_side(tmp_path / "shrunk", seed=1, share={(case, metric): 12_000_000})
    assert statuses(judge(base, shrunk))[(case, metric)] == "improved"
    within = write_side(tmp_path / "within", seed=1, share={(case, metric): 13_000_000 * 1.02 + 150_000})
    assert statuses(judge(base, within))[(case, metric)] == "unchanged"


def test_peak_memory_without_the_before_column_is_the_whole_peak(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    results = new / "run-03" / "results.csv"
    rows = list(csv.DictReader(results.read_text().splitlines()))
    with open(results, "w", newline="") as f:
        w = csv.DictWriter(f, [c for c in rows[0] if c != "mem_before_model_bytes"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    row = row_of(judge(base, new), CASES[0], "peak_mem_decode_bytes")
    assert row.base > OVERHEAD and "whole-process peak" in row.note


def test_missing_case_is_a_regression_and_extra_case_is_new(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1, cases=CASES[:2] + ("transformer-tiny-b1-s256",))
    c = judge(base, new)
    assert statuses(c)[(CASES[2], "-")] == "missing"
    assert "absent from 7 of 7 NEW run(s)" in row_of(c, CASES[2], "-").note
    assert statuses(c)[("transformer-tiny-b1-s256", "-")] == "new"
    assert run_cli(base, new) == 1


def test_a_case_that_fails_in_one_new_run_is_missing(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    shutil.rmtree(new / "run-04")
    write_run(new / "run-04", np.random.default_rng(9), status={CASES[0]: "error"})
    c = judge(base, new)
    row = row_of(c, CASES[0], "-")
    assert row.status == "missing" and row.note == "coverage lost: error in 1 of 7 NEW run(s): RuntimeError: boom"
    assert not any(r.case_id == CASES[0] and r.metric != "-" for r in c.rows)
    assert run_cli(base, new) == 1
    assert "  missing: coverage lost: error in 1 of 7 NEW run(s)" in capsys.readouterr().out


def test_a_case_that_fails_in_one_base_run_is_judged_on_the_others(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    shutil.rmtree(base / "run-02")
    write_run(base / "run-02", np.random.default_rng(9), status={CASES[1]: "oom"})
    c = judge(base, write_side(tmp_path / "new", seed=1))
    assert changed(c) == {}
    assert row_of(c, CASES[1], "decode_ms_per_step").runs == "6/7"
    assert any(f"{CASES[1]} failed or is absent in 1 of 7 BASE runs" in n for n in c.notes)


def test_device_name_mismatch_is_unusable_unless_allowed(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    other = write_side(tmp_path / "other", seed=1, env={"device_name": "Intel Xeon"})
    err = expect_unusable(capsys, base, other, "different device_name", "'test-cpu'", "'Intel Xeon'")
    assert "--allow-mismatch" in err
    assert run_cli(base, other, "--allow-mismatch") == 0
    assert "warning: different device_name" in capsys.readouterr().out
    # one run of NEW on another machine is enough to refuse
    mixed = write_side(tmp_path / "mixed", seed=1)
    (mixed / "run-05" / "env.json").write_text(json.dumps({"suite": "smoke", "device": "cpu",
                                                           "device_name": "Intel Xeon"}))
    expect_unusable(capsys, base, mixed, "different device_name")
    # a run that did not record it (older code) is not a mismatch
    unnamed = write_side(tmp_path / "unnamed", seed=1)
    (unnamed / "run-00" / "env.json").write_text(json.dumps({"suite": "smoke", "device": "cpu"}))
    assert run_cli(base, unnamed) == 0


def test_json_format_and_dashboard_files(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1, scale={(CASES[1], "decode_ms_per_step"): 1.25})
    assert run_cli(base, new, "--format", "json", "--dashboard-dir", tmp_path / "dash") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] and report["counts"]["regressed"] == 1 and not report["inconclusive"]
    [row] = [r for r in report["rows"] if r["status"] == "regressed"]
    assert row["ratio_low"] < row["ratio"] < row["ratio_high"] and row["basis"] == "runs"
    smaller = json.loads((tmp_path / "dash" / "benchmark-smaller-is-better.json").read_text())
    names = {e["name"] for e in smaller}
    assert f"{CASES[1]}/decode_ms_per_step" in names
    assert all(set(e) >= {"name", "unit", "value"} and isinstance(e["value"], float) for e in smaller)
    assert json.loads((tmp_path / "dash" / "benchmark-bigger-is-better.json").read_text()) == []


def test_markdown_format(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1, scale={(CASES[0], "prefill_ms"): 1.3})
    assert run_cli(base, new, "--format", "markdown") == 1
    out = capsys.readouterr().out
    assert out.startswith("| case | metric | status | base | new | change | p | runs | note |")
    assert f"| {CASES[0]} | prefill_ms | regressed |" in out
    assert f"| {CASES[1]} | (all) | 7 unchanged |" in out
    assert "**FAIL: regression" in out
    assert run_cli(base, new, "--format", "markdown", "--all", "--metrics", "decode_ms_per_step") == 0
    assert capsys.readouterr().out.count("| decode_ms_per_step | unchanged |") == len(CASES)


LONG_CASES = ("transformer-1.4b-b1-s4096-g32-wna-1.58bit-bfloat16-torch-eager",  # the longest real ids
              "yoco-gret-1.4b-b1-s131072-g32-wna-1.58bit-bfloat16-torch-compiled")


def test_table_fits_120_columns_in_human_units(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0, cases=LONG_CASES)
    new = write_side(tmp_path / "new", seed=1, cases=LONG_CASES, scale={(LONG_CASES[0], "decode_ms_per_step"): 1.3},
                     share={(LONG_CASES[1], "peak_mem_prefill_bytes"): 15_000_000},
                     fixed={(LONG_CASES[1], "kv_cache_bytes"): 107520})
    for extra in ([], ["--all"]):
        assert run_cli(base, new, *extra) == 1
        out = capsys.readouterr().out
        assert max(len(line) for line in out.splitlines()) <= 120, out
        assert "e+" not in out and "e-0" not in out, out  # never 5.837e+04 beside 107520
    assert "14.3 MiB" in out and "105 KiB" in out and "64.0 KiB" in out and "ms" in out and "+41.0 KiB" in out
    assert "* the model's share: peak minus mem_before_model_bytes" in out


def test_only_what_changed_by_default_everything_with_all(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1, scale={(CASES[2], "prefill_ms"): 1.3, (CASES[1], "prefill_ms"): 0.7})
    run_cli(base, new)
    lines = capsys.readouterr().out.splitlines()
    # the worst case first, then the improved one, then one line for the unchanged one
    assert lines[0] == f"{CASES[2]}  (and 6 unchanged)"
    assert lines[1].startswith("  prefill_ms              regressed")
    assert lines[2] == f"{CASES[1]}  (and 6 unchanged)"
    assert lines[3].startswith("  prefill_ms              improved")
    assert lines[4].split() == [CASES[0], "7", "unchanged"]
    run_cli(base, new, "--all")
    out = capsys.readouterr().out
    assert out.count("  decode_ms_per_step      unchanged") == len(CASES)
    assert out.splitlines()[0] == CASES[2]


def test_human_units():
    h = compare.human
    assert [h(512, "bytes"), h(107520, "bytes"), h(13_000_000, "bytes"), h(3 * 2**30, "bytes")] == \
        ["512 B", "105 KiB", "12.4 MiB", "3.00 GiB"]
    assert [h(0.123, "ms"), h(4.684, "ms"), h(23.7, "ms"), h(2500, "ms")] == ["0.123 ms", "4.68 ms", "23.7 ms",
                                                                           "2.50 s"]
    assert [h(232.7, "tok/s"), h(10750.2, "tok/s"), h(0.123, "fraction"), h(275328, "count")] == \
        ["233 tok/s", "10,750 tok/s", "12.3%", "275,328"]
    assert [h(-2048, "bytes", signed=True), h(2, "bytes", signed=True), h(math.nan, "ms")] == ["-2.00 KiB", "+2 B", "-"]
    assert [h(0, "ms"), h(0.00001, "ms")] == ["0 ms", "1.0e-05 ms"]


def test_merge_confirmation_replaces_rerun_timings_and_fails_lost_cases(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    slow = (CASES[1], "decode_ms_per_step")
    new = write_side(tmp_path / "new", seed=1, scale={slow: 1.25})
    first = judge(base, new)
    targets = compare.confirmation_targets(first, compare.Options())
    assert slow in targets and all(k[1] in TIMINGS for k in targets)
    cbase = write_side(tmp_path / "cbase", seed=2, cases=(CASES[1],))
    cnew = write_side(tmp_path / "cnew", seed=3, cases=(CASES[1],), scale={slow: 1.25})
    sides = {s: compare.load_side(p) for s, p in (("b", base), ("n", new), ("cb", cbase), ("cn", cnew))}
    options = compare.Options(metrics=("decode_ms_per_step",), family_size=len(first.evidence), cases=(CASES[1],),
                              timings=(slow,))
    pooled = compare.compare_runs(sides["b"] + sides["cb"], sides["n"] + sides["cn"], options)
    merged = compare.merge_confirmation(first, pooled, [slow])
    row = row_of(merged, *slow)
    assert row.status == "regressed" and row.runs == "14/14" and row.note.startswith("decided on the first and")
    assert row.p == pytest.approx(6 / math.comb(28, 14))  # pooled, still Holm over the 6 timings
    assert len(merged.rows) == len(first.rows) and merged.failed
    assert [(r.case_id, r.metric) for r in pooled.rows] == [slow]  # the re-run timing only
    # the case crashes in the confirmation: the gate fails, naming it
    crashed = write_side(tmp_path / "crashed", seed=3, cases=(CASES[1],), status={CASES[1]: "error"})
    pooled = compare.compare_runs(sides["b"] + sides["cb"], sides["n"] + compare.load_side(crashed), options)
    merged = compare.merge_confirmation(first, pooled, [slow])
    lost = row_of(merged, CASES[1], "-")
    assert lost.status == "missing" and lost.note.startswith("lost in the confirmation runs: error in 7 of 14")
    assert slow not in statuses(merged) and merged.failed


def test_metrics_option_and_bad_values(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    c = judge(base, new, metrics=("kv_cache_bytes",))
    assert {r.metric for r in c.rows} == {"kv_cache_bytes"}
    for argv in (["--max-slowdown", "five"], ["--max-slowdown", "150%"], ["--alpha", "2"],
                 ["--metrics", "bogus_ms"], ["--timing-source", "scaled"]):
        with pytest.raises(SystemExit) as e:
            run_cli(base, new, *argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "150%" in err and "bogus_ms" in err and "valid metrics" in err and "'scaled'" in err
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    args = parser.parse_args([".", ".", "--max-slowdown", "10%"])
    assert args.max_slowdown == pytest.approx(0.1) and args.fail_likely and not args.show_all


@pytest.mark.parametrize("command", ["compare", "gate"])
def test_every_argument_has_help(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    actions = [a for a in sub._actions if a.dest != "help"]
    assert len(actions) >= 10
    missing = [a.dest for a in actions if not (a.help and len(a.help) > 15)]
    assert missing == []
    assert gate.DEFAULT_RUNS >= stats.runs_needed(0.01, 12)  # the default can decide the smoke suite


# ---- unusable input: exit 2, one message, no traceback ----

def expect_unusable(capsys, base, new, *fragments):
    assert run_cli(base, new) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unusable input" in captured.err and "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in captured.err
    return captured.err


def test_missing_samples_csv(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    (new / "run-03" / "samples.csv").unlink()
    expect_unusable(capsys, base, new, "run-03/samples.csv: missing")


def test_truncated_csv(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    samples = new / "run-01" / "samples.csv"
    text = samples.read_text()
    samples.write_text(text[: len(text) // 2])  # cut mid-line
    expect_unusable(capsys, base, new, "run-01/samples.csv", "truncated")
    results = base / "run-00" / "results.csv"
    results.write_text(results.read_text().rstrip("\n").rsplit(",", 3)[0] + "\n")
    expect_unusable(capsys, base, new, "run-00/results.csv", "fields")


def test_mismatched_device_or_suite(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    gpu = write_side(tmp_path / "gpu", seed=1, env={"device": "cuda", "device_name": "NVIDIA H100"})
    expect_unusable(capsys, base, gpu, "different device", "--allow-mismatch")
    other = write_side(tmp_path / "other", seed=1, env={"suite": "cpu-scaling"})
    expect_unusable(capsys, base, other, "different suite", "'cpu-scaling'")
    assert run_cli(base, other, "--allow-mismatch") == 0
    assert "warning: different suite" in capsys.readouterr().out


def test_wrong_schema_and_bad_paths(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    samples = new / "run-00" / "samples.csv"
    samples.write_text(samples.read_text().replace("value", "val", 1))
    expect_unusable(capsys, base, new, "missing column(s) value")
    shutil.rmtree(new)
    write_side(new, seed=1)
    (new / "run-02" / "env.json").write_text("{not json")
    expect_unusable(capsys, base, new, "env.json: unreadable")
    (new / "run-02" / "env.json").write_text(json.dumps({"suite": "smoke"}))
    expect_unusable(capsys, base, new, "env.json: wrong schema")
    expect_unusable(capsys, base, tmp_path / "nowhere", "no such directory")
    (tmp_path / "empty").mkdir()
    expect_unusable(capsys, base, tmp_path / "empty", "no results.csv")
    bad_value = write_side(tmp_path / "bad", seed=1)
    s = bad_value / "run-00" / "samples.csv"
    rows = list(csv.reader(s.read_text().splitlines()))
    rows[1][3] = "fast"  # the value column
    s.write_text("".join(",".join(r) + "\n" for r in rows))
    expect_unusable(capsys, base, bad_value, "not a number")
    rows[1][3] = "-1.5"
    s.write_text("".join(",".join(r) + "\n" for r in rows))
    expect_unusable(capsys, base, bad_value, "-1.5", "not a positive time")
    dup = write_side(tmp_path / "dup", seed=1)
    r = dup / "run-00" / "results.csv"
    lines = r.read_text().splitlines()
    r.write_text("\n".join(lines + [lines[1]]) + "\n")
    expect_unusable(capsys, base, dup, "appears more than once")
    (r).write_text("")
    expect_unusable(capsys, base, dup, "empty file")


def test_a_noise_file_must_match_the_timing_source(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    noise = tmp_path / "noise.json"
    noise.write_text(json.dumps({"source": "raw", "spread": {}}))
    assert run_cli(base, base, "--noise-file", noise) == 2
    assert "measured on raw timings, but timings are judged normalized" in capsys.readouterr().err
    assert run_cli(base, base, "--noise-file", noise, "--timing-source", "raw") == 0


def drop_samples(run_dir, case, metric):
    path = run_dir / "samples.csv"
    rows = list(csv.reader(path.read_text().splitlines()))
    path.write_text("".join(",".join(r) + "\n" for r in rows if not (r[0] == case and r[1] == metric)))


def test_a_timing_missing_on_one_side(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    for run in new.iterdir():
        drop_samples(run, CASES[0], "decode_ms_per_step")
    row = row_of(judge(base, new), CASES[0], "decode_ms_per_step")
    assert (row.status, row.note) == ("missing", "timed in BASE, not in NEW")
    for run in base.iterdir():
        drop_samples(run, CASES[1], "prefill_ms")
    c = judge(base, write_side(tmp_path / "new2", seed=2))
    row = row_of(c, CASES[1], "prefill_ms")
    assert (row.status, row.note) == ("new", "not timed in BASE") and row.new == pytest.approx(20.0, rel=0.1)
    assert not c.failed


def test_nan_samples_are_left_out_and_a_run_without_any_is_not_a_run(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    for i, run in enumerate(sorted(new.iterdir())):
        path = run / "samples.csv"
        rows = list(csv.reader(path.read_text().splitlines()))
        for r in rows[1:]:
            if r[0] == CASES[0] and r[1] == "prefill_ms" and (i == 0 or r[2] == "3"):
                r[3] = r[5] = "nan"  # run 0 has no prefill sample left; the others lose one repeat
        path.write_text("".join(",".join(r) + "\n" for r in rows))
    row = row_of(judge(base, new), CASES[0], "prefill_ms")
    assert row.runs == "7/6" and row.status == "unchanged" and math.isfinite(row.ratio)


def test_an_exact_figure_that_varies_between_runs_says_so(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    shutil.rmtree(new / "run-06")
    write_run(new / "run-06", np.random.default_rng(3), fixed={(CASES[0], "weight_bytes"): 4_000_004})
    row = row_of(judge(base, new), CASES[0], "weight_bytes")
    assert row.status == "regressed" and row.note == "must match exactly; varies between runs in NEW"
    row = row_of(judge(new, new), CASES[0], "weight_bytes")
    assert row.status == "unchanged" and row.note == "varies between runs in BASE and NEW"


def test_status_words_are_read_loosely_and_memory_nan_is_not_a_value(tmp_path):
    base = write_side(tmp_path / "base", seed=0, status={CASES[0]: " OK "})
    new = write_side(tmp_path / "new", seed=1)
    results = new / "run-00" / "results.csv"
    rows = list(csv.DictReader(results.read_text().splitlines()))
    rows[1]["peak_mem_decode_bytes"] = ""
    with open(results, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    c = judge(base, new)
    assert changed(c) == {}
    row = row_of(c, CASES[1], "peak_mem_decode_bytes")
    assert row.status == "unchanged" and row.base == pytest.approx(13_000_000, abs=60_000)


def test_a_run_of_several_processes_gives_one_value_per_process(tmp_path):
    """`bench run --processes N` keeps N processes' samples in one run, told apart by `process`."""
    def merged(root, seed, scale=None):
        side = write_side(tmp_path / f"parts-{root}", seed=seed, scale=scale)
        out = tmp_path / root
        shutil.copytree(side / "run-00", out)
        frames = []
        for i, run in enumerate(sorted(side.iterdir())):
            rows = list(csv.reader((run / "samples.csv").read_text().splitlines()))
            frames += [r + [str(i)] for r in rows[1:]]
        header = list(csv.reader((side / "run-00" / "samples.csv").read_text().splitlines()))[0] + ["process"]
        (out / "samples.csv").write_text("".join(",".join(r) + "\n" for r in [header, *frames]))
        return out

    slow = (CASES[0], "decode_ms_per_step")
    c = judge(merged("base", 0), merged("new", 1, scale={slow: 1.25}))
    assert changed(c) == {slow: "regressed"}
    assert row_of(c, *slow).runs == "7/7" and row_of(c, *slow).basis == "runs"


# --- the deciding code's edges (mutation testing found them unchecked) ---

def test_a_device_mismatch_alone_and_a_base_run_unlike_the_first_are_unusable(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    cuda = write_side(tmp_path / "cuda", seed=1, env={"device": "cuda"})  # the same device_name
    err = expect_unusable(capsys, base, cuda, "different device: ", "'cpu'", "'cuda'")
    assert err.rstrip().endswith("has 'cuda' (pass --allow-mismatch to compare anyway)")
    odd_base = write_side(tmp_path / "odd-base", seed=2)
    (odd_base / "run-01" / "env.json").write_text(json.dumps({"suite": "other", "device": "cpu",
                                                             "device_name": "test-cpu"}))
    expect_unusable(capsys, odd_base, write_side(tmp_path / "new", seed=3), "different suite", "'other'")


def test_bad_timing_source_and_unknown_metric_name_what_is_allowed(tmp_path):
    base = compare.load_side(write_side(tmp_path / "base", seed=0, runs=2))
    with pytest.raises(compare.UnusableInput, match="^timing source 'scaled': allowed raw, normalized$"):
        compare.compare_runs(base, base, compare.Options(timing_source="scaled"))
    expected = f"unknown metric 'bogus': valid metrics are {', '.join(compare.METRICS)}"
    with pytest.raises(compare.UnusableInput) as raised:
        compare.compare_runs(base, base, compare.Options(metrics=("prefill_ms", "bogus")))
    assert str(raised.value) == expected


def test_cases_only_in_new_are_all_listed_with_what_failed(tmp_path):
    base = write_side(tmp_path / "base", seed=0, runs=3, cases=CASES[:1])
    new = write_side(tmp_path / "new", seed=1, runs=3)
    shutil.rmtree(new / "run-02")
    write_run(new / "run-02", np.random.default_rng(5), status={CASES[2]: "error"})
    c = judge(base, new)
    notes = {r.case_id: r.note for r in c.rows if r.status == "new"}
    assert notes == {CASES[1]: "only in NEW",
                     CASES[2]: "only in NEW; error in 1 of 3 NEW run(s): RuntimeError: boom"}


def test_a_confirmation_judges_its_timings_whatever_their_order(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    c = judge(base, new, metrics=("prefill_ms", "decode_ms_per_step"), cases=(CASES[0],),
              timings=((CASES[0], "decode_ms_per_step"),), family_size=6)
    assert [(r.case_id, r.metric) for r in c.rows] == [(CASES[0], "decode_ms_per_step")]


def test_too_few_runs_note_counts_the_timings(tmp_path):
    c = judge(write_side(tmp_path / "base", seed=0, runs=1), write_side(tmp_path / "new", seed=1, runs=1))
    assert any("a side for 6 timing(s) at alpha 0.01" in n for n in c.notes), c.notes


def test_default_metrics_are_the_timings_sampled_and_every_other_kind(tmp_path):
    runs = compare.load_side(write_side(tmp_path / "base", seed=0, runs=1))
    others = [m for m, spec in compare.METRICS.items() if spec.kind != "timing"]
    assert compare.default_metrics(runs) == ("prefill_ms", "decode_ms_per_step", *others)


def test_result_values_raw_or_the_models_share(tmp_path):
    runs = compare.load_side(write_side(tmp_path / "base", seed=0, runs=2))
    case, peak = CASES[0], "peak_mem_prefill_bytes"
    raw = [float(r.results.at[case, peak]) for r in runs]
    assert compare.result_values(runs, case, peak) == raw  # not the share unless asked
    assert compare.result_values(runs, case, "kv_cache_bytes") == [65536.0, 65536.0]
    before = [float(r.results.at[case, compare.MEMORY_BEFORE]) for r in runs]
    assert compare.result_values(runs, case, peak, share=True) == [a - b for a, b in zip(raw, before)]
    runs[0].results.loc[case, compare.MEMORY_BEFORE] = math.nan  # not recorded: counts as 0
    assert compare.result_values(runs, case, peak, share=True) == [raw[0], raw[1] - before[1]]
    runs[0].results = runs[0].results.drop(columns=["kv_cache_bytes"])  # a run without the column
    assert compare.result_values(runs, case, "kv_cache_bytes") == [65536.0]
