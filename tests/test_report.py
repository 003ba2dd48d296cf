"""bench.show: human units, verdicts on synthetic rows whose truth is known, summary.md, the
write-time schema check, the HTML page's content (the browser test is test_html_browser.py) and
progress lines."""

import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from bench.show import html, progress, report, spread, units, verdicts
from bench.suite import load_suite

# ---- units ----


@pytest.mark.parametrize("value, text", [(2.950e8, "281 MiB"), (1024, "1.00 KiB"), (512, "512 B"),
                                         (33816576, "32.2 MiB"), (5 * 2**30, "5.00 GiB"), (0, "0 B")])
def test_sizes_are_binary_units(value, text):
    assert units.size(value) == text


def test_no_number_is_written_with_an_exponent():
    for v in (2.95e8, 1.234e-4, 58370.0, 107520, 0.615, 1659.3):
        for fmt in (units.sig, units.size, units.ms, units.tok_s, units.count, units.ratio, units.percent):
            assert not re.search(r"\de[+-]?\d", fmt(v)), (fmt.__name__, v, fmt(v))
    assert units.ms(1659.3) == "1,659 ms" and units.ms(17.66) == "17.7 ms" and units.ms(12345) == "12.3 s"
    assert units.tok_s(244.69) == "245 tok/s" and units.ratio(1.4712) == "1.47x"
    assert units.value("peak_mem_decode_bytes", 2.95e8) == "281 MiB"
    assert units.value("prefill_mfu", 0.615) == "61.5%" and units.value("arch", "yoco-gret") == "yoco-gret"
    assert units.sig(math.nan) == "-"


# ---- synthetic runs whose truth is known ----

LENGTHS = (256, 512, 1024, 2048)
GEN = 16


def synthetic(*, yoco_exp=1.0, base_exp=1.7, base_scale=1.0, kv_ratio=4, decode_ratio=1.5, noise=0.01, repeats=7,
              lengths=LENGTHS, archs=("yoco-gret", "transformer"), seed=0):
    """Rows and samples of the tiny preset (L = 4 layers): prefill_ms = c N^exp, decode step time
    the baseline's / decode_ratio, cache bytes affine in tokens; each sample the median times
    (1 + noise * a normal draw)."""
    rng = np.random.default_rng(seed)
    rows, samples = [], []
    for arch in archs:
        for n in lengths:
            case_id = f"{arch}-tiny-s{n}"
            base = arch == "transformer"
            prefill = (base_scale * 1e-3 * n**base_exp) if base else (1e-3 * n**yoco_exp) * 40
            step = 2.0 if base else 2.0 / decode_ratio
            per_token = 256 * (kv_ratio if base else 1)
            fixed = 0 if base else 4096
            row = dict(case_id=case_id, arch=arch, preset="tiny", batch=1, seq_len=n, gen_len=GEN, window=None,
                       bitnet="none", dtype="float32", backend="torch", decode_mode="eager", status="ok",
                       kv_cache_bytes=fixed + per_token * (n + GEN), kv_cache_bytes_per_token=per_token,
                       kv_cache_fixed_bytes=fixed, peak_mem_decode_bytes=3e8, mem_before_model_bytes=2.5e8,
                       peak_mem_prefill_bytes=3e8, decode_tok_s=1e3 / step, weight_bytes=1e6, params=2.5e5)
            for metric, median in (("prefill_ms", prefill), ("decode_ms_per_step", step)):
                values = median * (1 + noise * rng.standard_normal(repeats))
                samples += [dict(case_id=case_id, metric=metric, repeat=r, value=v) for r, v in enumerate(values)]
                row[metric] = float(np.median(values))
                row[f"{metric}_p25"], row[f"{metric}_p75"] = np.percentile(values, [25, 75])
            rows.append(row)
    return pd.DataFrame(rows), pd.DataFrame(samples)


def by_claim(found):
    out = {}
    for v in found:
        kind = ("kv" if v.claim.startswith("KV") else "exp " + v.claim.split(" of ")[1].split()[0]
                if "exponent" in v.claim else "prefill" if v.claim.startswith("prefill speed") else "decode")
        out[kind] = v
    return out


def test_verdicts_hold_where_the_rows_say_so():
    df, samples = synthetic()
    found = by_claim(verdicts.verdicts(df, samples))
    assert set(found) == {"kv", "exp yoco-gret", "exp transformer", "prefill", "decode"}
    assert all(v.verdict == verdicts.HOLDS for v in found.values()), [v.sentence() for v in found.values()]
    assert found["kv"].value == pytest.approx(4.0) and "4x" in found["kv"].expected
    # the intervals are tight and about the truth (a 95% interval misses it one time in 20)
    for kind, truth in (("exp yoco-gret", 1.0), ("exp transformer", 1.7), ("decode", 1.5), ("prefill", None)):
        v = found[kind]
        assert v.low <= v.value <= v.high and v.high - v.low < 0.1 * v.value, v.sentence()
        if truth:
            assert v.low - 0.02 < truth < v.high + 0.02, v.sentence()
    assert "bootstrap" in found["decode"].basis
    assert "2,048 tokens" in found["decode"].claim


def test_verdicts_do_not_hold_where_the_rows_say_otherwise():
    df, samples = synthetic(yoco_exp=1.5, base_exp=0.8, base_scale=1e-3, kv_ratio=2, decode_ratio=0.5)
    found = by_claim(verdicts.verdicts(df, samples))
    assert all(v.verdict == verdicts.FAILS for v in found.values()), [v.sentence() for v in found.values()]
    assert found["kv"].value == pytest.approx(2.0)
    assert found["decode"].high < 1


def test_verdicts_cannot_tell_within_the_noise_or_without_the_rows():
    df, samples = synthetic(decode_ratio=1.0, noise=0.3, repeats=5)
    assert by_claim(verdicts.verdicts(df, samples))["decode"].verdict == verdicts.UNKNOWN
    one, samples = synthetic(lengths=(512,))
    found = by_claim(verdicts.verdicts(one, samples))
    assert found["exp yoco-gret"].verdict == found["exp transformer"].verdict == verdicts.UNKNOWN
    alone, samples = synthetic(archs=("yoco-gret",))
    [v] = verdicts.verdicts(alone, samples)
    assert v.verdict == verdicts.UNKNOWN and "No transformer case" in v.detail
    few, samples = synthetic(repeats=2)  # no bootstrap, and here no spread columns either
    few = few.drop(columns=[c for c in few if c.endswith(("_p25", "_p75"))])
    assert by_claim(verdicts.verdicts(few, samples))["decode"].verdict == verdicts.UNKNOWN


def test_verdicts_without_samples_use_the_spread_columns():
    df, _ = synthetic()
    found = by_claim(verdicts.verdicts(df))
    assert found["decode"].verdict == verdicts.HOLDS and "p25-p75" in found["decode"].basis
    assert found["decode"].low <= found["decode"].value <= found["decode"].high


def test_verdicts_prefer_the_runs_confidence_intervals():
    """With --processes the rows carry a CI from the spread between processes: the verdicts use it,
    not a bootstrap of pooled samples (which would understate that spread)."""
    df, samples = synthetic(decode_ratio=1.1)
    for metric in ("prefill_ms", "decode_ms_per_step"):
        df[f"{metric}_ci_low"], df[f"{metric}_ci_high"] = df[metric] * 0.8, df[metric] * 1.25
    found = by_claim(verdicts.verdicts(df, samples))
    assert "confidence interval" in found["decode"].basis and found["decode"].verdict == verdicts.UNKNOWN
    assert found["decode"].low == pytest.approx(found["decode"].value * 0.8 / 1.25)


def test_ci_columns_win_over_quartiles_and_rates_keep_the_time_spread():
    df, _ = synthetic()
    assert spread.words(df, "prefill_ms") == spread.IQR_WORDS
    df["prefill_ms_ci_low"], df["prefill_ms_ci_high"] = df["prefill_ms"] * 0.9, df["prefill_ms"] * 1.1
    low, high, words = spread.bounds(df, "prefill_ms")
    assert words == spread.CI_WORDS and (low < df["prefill_ms"]).all()
    low, high, _ = spread.bounds(df, "decode_tok_s")  # from the step time's quartiles
    assert ((low <= df["decode_tok_s"]) & (df["decode_tok_s"] <= high)).all()


# ---- summary.md ----

ENV = dict(suite="synthetic", device="cpu", device_name="Test CPU", threads=1, git_commit="abc1234",
           versions={"torch": "2.13.0"}, copy_bandwidth_bytes_s=4e10, matmul_flops_s_by_dtype={"float32": 1e11},
           repeats=7, warmup=1, timestamp="2026-01-01T00:00:00")


def test_summary_answers_in_words_first_in_human_units():
    df, samples = synthetic()
    text = report.summary_markdown(df, dict(ENV, missing_cases=["x-case"]), samples, ["plots/prefill_latency.png"],
                                   "report.html")
    assert text.index("## Does YOCO's saving hold here?") < text.index("## Plots") < text.index("## Trends")
    assert "**holds**" in text and "![prefill latency](plots/prefill_latency.png)" in text
    assert "1 missing" in text and "x-case" in text and "(report.html)" in text
    assert "286 MiB" in text and "KiB" in text and " ms" in text and "tok/s" in text
    assert not re.search(r"\d\.\d+e[+-]\d", text), "a number written with an exponent"


# ---- results.csv keeps what the schema lacks ----

def test_a_key_outside_the_schema_is_kept_and_named(tmp_path, capsys):
    path = tmp_path / "results.csv"
    report.append_rows(path, report.COLUMNS, [dict(case_id="a", status="ok", brand_new_metric=1.5)])
    assert "brand_new_metric" in capsys.readouterr().err
    kept = [json.loads(line) for line in report.unlisted_path(path).read_text().splitlines()]
    assert kept == [{"case_id": "a", "brand_new_metric": 1.5}]
    assert pd.read_csv(path)["status"].tolist() == ["ok"]
    report.append_rows(path, report.COLUMNS, [dict(case_id="b", status="ok")])
    assert capsys.readouterr().err == "" and len(report.unlisted_path(path).read_text().splitlines()) == 1


# ---- the page ----

def write_run(path, df, samples, env):
    path.mkdir(parents=True)
    report.append_rows(path / "results.csv", report.COLUMNS, df.to_dict("records"))
    report.append_rows(path / "samples.csv", report.SAMPLE_COLUMNS,
                       samples.assign(calibration_ms=1.0, normalized=samples["value"]).to_dict("records"))
    report.write_env(path / "env.json", env)
    return path


def test_page_is_self_contained_with_plots_tables_history(tmp_path):
    old = write_run(tmp_path / "old", *synthetic(seed=1), dict(ENV, git_commit="1111111aaaa", timestamp="2026-01-01"))
    new_df, new_samples = synthetic(seed=2, decode_ratio=1.8)
    new = write_run(tmp_path / "new", new_df, new_samples, dict(ENV, git_commit="2222222bbbb", timestamp="2026-02-01"))
    page = html.page([html.load(old), html.load(new)])
    for section in ("verdicts", "environment", "plots", "tables", "runs", "comparison", "history"):
        assert f'<section id="{section}">' in page
    # nothing to fetch: no external script, style, image or link
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page) and "<link" not in page
    assert "@import" not in page and "url(http" not in page
    assert page.count("<svg") >= 4 + 1 and page.count('class="tip') > 10
    assert 'data-scale="log"' in page and 'data-scale="linear"' in page
    assert 'id="history"' in page and page.count('class="trend"') == len(new_df) * len(html.HISTORY_METRICS)
    assert "1111111" in page and "2222222" in page
    assert len(page) < 1_500_000


def test_history_pools_runs_of_one_commit(tmp_path):
    runs = [html.load(write_run(tmp_path / f"r{i}", *synthetic(seed=i),
                                dict(ENV, git_commit=c, timestamp=f"2026-01-0{i + 1}")))
            for i, c in enumerate(["aaa", "aaa", "bbb"])]
    points = html.history(runs)
    one = points[(points["case_id"] == "yoco-gret-tiny-s512") & (points["metric"] == "prefill_ms")]
    assert list(one["position"]) == [0, 1] and list(one["runs"]) == [2, 1]
    values = [r.results.set_index("case_id").loc["yoco-gret-tiny-s512", "prefill_ms"] for r in runs[:2]]
    assert one["low"].iloc[0] == min(values) and one["high"].iloc[0] == max(values)


# ---- progress ----

def test_progress_off_a_terminal_is_one_line_per_case_with_elapsed_and_eta():
    stream = io.StringIO()
    cases = load_suite("smoke").cases[:2]
    bar = progress.Progress(len(cases), stream=stream)
    for c in cases:
        bar.show(c)
        bar.done(c, "ok", 1.25)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] 00:00 elapsed, ETA 00:00 | yoco-gret tiny, prompt 128 + 36 decode steps")
    assert re.search(rf"ok in 1\.[23] s \({cases[1].case_id}\)$", lines[1]), lines[1]
