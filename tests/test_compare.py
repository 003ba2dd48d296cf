"""`bench compare` on synthetic run directories written here (the same files `bench run` writes)."""

import argparse
import csv
import json
import shutil

import numpy as np
import pytest

from bench.judge import compare

CASES = ("yoco-gret-tiny-b1-s128", "yoco-swa-tiny-b1-s128", "transformer-tiny-b1-s128")
TIMINGS = {"prefill_ms": 20.0, "decode_ms_per_step": 2.0}
FIXED = {"kv_cache_bytes": 65536, "weight_bytes": 4_000_000, "params": 1_000_000,
         "peak_mem_prefill_bytes": 300_000_000, "peak_mem_decode_bytes": 310_000_000}
RESULT_COLUMNS = ["case_id", "arch", "device", "prefill_ms", "decode_ms_per_step", "decode_tok_s",
                  *FIXED, "status", "error"]


def write_run(path, rng, *, machine=1.0, scale=None, fixed=None, cases=CASES, status=None,
              env=None, noise=0.03, repeats=5):
    """One process run: `machine` slows everything (program and calibration alike); `scale`
    {(case, metric): factor} slows only the program; `fixed` {(case, column): value}."""
    path.mkdir(parents=True)
    scale, fixed, status = scale or {}, fixed or {}, status or {}
    luck = machine * (1 + noise * rng.standard_normal())  # shared by this process's repeats
    with open(path / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "metric", "repeat", "value", "calibration_ms", "normalized"])
        for case in cases:
            for metric, center in TIMINGS.items():
                for repeat in range(repeats):
                    jitter = luck * (1 + 0.01 * rng.standard_normal())
                    calibration = 5.0 * jitter
                    value = center * scale.get((case, metric), 1.0) * jitter
                    w.writerow([case, metric, repeat, value, calibration, value / calibration])
    with open(path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RESULT_COLUMNS)
        for case in cases:
            decode = TIMINGS["decode_ms_per_step"] * scale.get((case, "decode_ms_per_step"), 1.0) * luck
            row = {"case_id": case, "arch": case.split("-tiny")[0], "device": "cpu",
                   "prefill_ms": TIMINGS["prefill_ms"] * luck, "decode_ms_per_step": decode,
                   "decode_tok_s": 1e3 / decode, "status": status.get(case, "ok"), "error": ""}
            row.update({k: fixed.get((case, k), v) for k, v in FIXED.items()})
            w.writerow([row[c] for c in RESULT_COLUMNS])
    info = {"suite": "smoke", "device": "cpu", "device_name": "test-cpu"}
    (path / "env.json").write_text(json.dumps({**info, **(env or {})}))
    return path


def write_side(root, seed, runs=5, **kwargs):
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


def judge(base, new, **options):
    return compare.compare_runs(compare.load_side(base), compare.load_side(new), compare.Options(**options))


def test_identical_code_is_unchanged(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    c = judge(base, new)
    assert set(statuses(c).values()) == {"unchanged"}
    assert len(c.rows) == len(CASES) * (len(TIMINGS) + len(FIXED))
    assert run_cli(base, new) == 0
    assert "OK: no regression" in capsys.readouterr().out


def test_planted_slowdown_of_one_decode_is_flagged(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    slow = (CASES[1], "decode_ms_per_step")
    new = write_side(tmp_path / "new", seed=1, scale={slow: 1.25})
    c = judge(base, new)
    flagged = {k for k, s in statuses(c).items() if s != "unchanged"}
    assert flagged == {slow}
    row = next(r for r in c.rows if (r.case_id, r.metric) == slow)
    assert row.status == "regressed" and row.ratio == pytest.approx(1.25, rel=0.05)
    assert row.p < 0.01 and row.runs == "5/5"
    assert run_cli(base, new) == 1
    out = capsys.readouterr().out
    assert "FAIL: regression" in out and "regressed" in out


def test_planted_speedup_is_an_improvement(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    fast = (CASES[0], "decode_ms_per_step")
    new = write_side(tmp_path / "new", seed=1, scale={fast: 0.75})
    c = judge(base, new)
    assert {k for k, s in statuses(c).items() if s != "unchanged"} == {fast}
    assert statuses(c)[fast] == "improved"
    assert run_cli(base, new) == 0


def test_machine_wide_slowdown_is_not_a_regression(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1, machine=1.6)  # program and calibration alike
    c = judge(base, new)
    timing = [r for r in c.rows if r.metric in TIMINGS]
    assert all(r.status == "unchanged" for r in timing)
    assert all(r.raw_ratio > 1.4 for r in timing)  # shown, not judged
    assert run_cli(base, new) == 0
    assert "raw ratio" in capsys.readouterr().out


def test_changed_kv_cache_bytes_fails_whatever_the_timings(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    case = CASES[2]
    new = write_side(tmp_path / "new", seed=1, fixed={(case, "kv_cache_bytes"): 65536 + 2},
                     scale={(case, "decode_ms_per_step"): 0.75})
    c = judge(base, new)
    assert statuses(c)[(case, "kv_cache_bytes")] == "regressed"
    assert statuses(c)[(case, "decode_ms_per_step")] == "improved"
    assert c.failed and run_cli(base, new) == 1
    # smaller is not better for an exact figure: it must match
    smaller = write_side(tmp_path / "smaller", seed=1, fixed={(case, "params"): 999})
    assert statuses(judge(base, smaller))[(case, "params")] == "regressed"


def test_peak_memory_tolerance(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    case, metric = CASES[0], "peak_mem_decode_bytes"
    allowed = int(310_000_000 * 1.02 + (1 << 20)) - 1000
    within = write_side(tmp_path / "within", seed=1, fixed={(case, metric): allowed})
    beyond = write_side(tmp_path / "beyond", seed=1, fixed={(case, metric): allowed + 2000})
    assert statuses(judge(base, within))[(case, metric)] == "unchanged"
    assert statuses(judge(base, beyond))[(case, metric)] == "regressed"


def test_missing_case_is_a_regression_and_extra_case_is_new(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1, cases=CASES[:2] + ("transformer-tiny-b1-s256",))
    c = judge(base, new)
    assert statuses(c)[(CASES[2], "-")] == "missing"
    assert statuses(c)[("transformer-tiny-b1-s256", "-")] == "new"
    assert run_cli(base, new) == 1
    failed = write_side(tmp_path / "failed", seed=1, status={CASES[0]: "error"})
    row = next(r for r in judge(base, failed).rows if r.case_id == CASES[0])
    assert row.status == "missing" and "error in NEW" in row.note


def test_a_single_run_a_side_cannot_flag_timings_and_says_so(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0, runs=1)
    new = write_side(tmp_path / "new", seed=1, runs=1, scale={(CASES[0], "decode_ms_per_step"): 2.0})
    assert run_cli(base / "run-00", new / "run-00") == 0
    assert "no timing can be flagged" in capsys.readouterr().out


def test_json_format_and_dashboard_files(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1, scale={(CASES[1], "decode_ms_per_step"): 1.25})
    assert run_cli(base, new, "--format", "json", "--dashboard-dir", tmp_path / "dash") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] and report["counts"]["regressed"] == 1
    smaller = json.loads((tmp_path / "dash" / "benchmark-smaller-is-better.json").read_text())
    names = {e["name"] for e in smaller}
    assert f"{CASES[1]}/decode_ms_per_step" in names
    assert all(set(e) >= {"name", "unit", "value"} and isinstance(e["value"], float) for e in smaller)
    assert json.loads((tmp_path / "dash" / "benchmark-bigger-is-better.json").read_text()) == []


def test_markdown_format(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0, runs=5)
    new = write_side(tmp_path / "new", seed=1, runs=5)
    assert run_cli(base, new, "--format", "markdown", "--metrics", "decode_ms_per_step") == 0
    out = capsys.readouterr().out
    assert out.startswith("| case | metric | status |")
    assert out.count("decode_ms_per_step") == len(CASES)


def test_metrics_option_and_bad_values(tmp_path, capsys):
    base = write_side(tmp_path / "base", seed=0)
    new = write_side(tmp_path / "new", seed=1)
    c = judge(base, new, metrics=("kv_cache_bytes",))
    assert {r.metric for r in c.rows} == {"kv_cache_bytes"}
    for argv in (["--max-slowdown", "five"], ["--max-slowdown", "150%"], ["--alpha", "2"],
                 ["--metrics", "bogus_ms"]):
        with pytest.raises(SystemExit) as e:
            run_cli(base, new, *argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "150%" in err and "bogus_ms" in err and "valid metrics" in err
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    assert parser.parse_args([".", ".", "--max-slowdown", "10%"]).max_slowdown == pytest.approx(0.1)


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
    samples.write_text(samples.read_text().replace("normalized", "norm", 1))
    expect_unusable(capsys, base, new, "missing column(s) normalized")
    shutil.rmtree(new)
    write_side(new, seed=1)
    (new / "run-02" / "env.json").write_text("{not json")
    expect_unusable(capsys, base, new, "env.json: unreadable")
    expect_unusable(capsys, base, tmp_path / "nowhere", "no such directory")
    (tmp_path / "empty").mkdir()
    expect_unusable(capsys, base, tmp_path / "empty", "no results.csv")
    bad_value = write_side(tmp_path / "bad", seed=1)
    s = bad_value / "run-00" / "samples.csv"
    rows = list(csv.reader(s.read_text().splitlines()))
    rows[1][3] = "fast"  # the value column
    s.write_text("".join(",".join(r) + "\n" for r in rows))
    expect_unusable(capsys, base, bad_value, "not a number")


def test_unconfirmed_flags_do_not_fail(tmp_path):
    base = write_side(tmp_path / "base", seed=0)
    slow = (CASES[1], "decode_ms_per_step")
    first = judge(base, write_side(tmp_path / "new", seed=1, scale={slow: 1.25}))
    confirm_base = write_side(tmp_path / "cbase", seed=2, cases=(CASES[1],))
    fluke = judge(confirm_base, write_side(tmp_path / "cnew", seed=3, cases=(CASES[1],)))
    merged = compare.mark_unconfirmed(first, fluke)
    assert statuses(merged)[slow] == "unconfirmed" and not merged.failed
    again = judge(confirm_base, write_side(tmp_path / "cslow", seed=3, cases=(CASES[1],), scale={slow: 1.25}))
    first = judge(base, tmp_path / "new")
    merged = compare.mark_unconfirmed(first, again)
    assert statuses(merged)[slow] == "regressed" and merged.failed
    assert "confirmed" in next(r for r in merged.rows if (r.case_id, r.metric) == slow).note
