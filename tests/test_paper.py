"""The paper table: each figure measured, by formula or not measured, from rows whose answer is known."""

import math

import pandas as pd

from bench.show import paper

K, M = 1024, 1 << 20


def row(arch, seq_len, *, status="ok", batch=1, search=None, **values):
    return dict(arch=arch, preset="3b", seq_len=seq_len, batch=batch, bitnet="none", status=status, device="cuda",
                params=3e9, max_batch_search=search, **values)


def frame(rows):
    return pd.DataFrame(rows)


def by_key(df):
    return {(c.figure.key, c.arch): c for c in paper.cells(df)}


def test_measured_formula_and_not_measured():
    rows = [
        # 32K: both measured
        row("transformer", 32 * K, prefill_ms=3000.0, peak_mem_prefill_bytes=20e9, peak_mem_decode_bytes=21e9),
        row("yoco-gret", 32 * K, prefill_ms=1000.0, peak_mem_prefill_bytes=10e9, peak_mem_decode_bytes=7e9),
        # the baseline's curve from 32K up: time ~ N^2
        row("transformer", 128 * K, prefill_ms=3000.0 * 16, peak_mem_prefill_bytes=40e9),
        # 1M: the baseline does not fit (skipped with its estimate); YOCO measured
        row("transformer", M, status="skipped", estimated_bytes=120e9),
        row("yoco-gret", M, prefill_ms=1000.0 * 32, peak_mem_prefill_bytes=15e9, peak_mem_decode_bytes=12e9,
            peak_mem_prefill_reserved_bytes=16e9),
        # 512K at the largest batch that fits
        row("transformer", 512 * K, batch=1, search="2 over; 1 fits; 1 measured", decode_tok_s=4.0),
        row("yoco-gret", 512 * K, batch=24, search="24 fits; 25 over; 24 measured", decode_tok_s=40.0),
    ]
    cells = by_key(frame(rows))
    c = cells[("memory_32k", "yoco-gret")]
    assert (c.how, c.ratio) == (paper.MEASURED, 21e9 / 10e9)
    c = cells[("prefill_32k", "yoco-gret")]
    assert (c.how, c.ratio) == (paper.MEASURED, 3.0)
    c = cells[("memory_1m", "yoco-gret")]  # reserved, where recorded, is what the process held
    assert c.how == paper.FORMULA and math.isclose(c.ratio, 120e9 / 16e9) and "did not fit" in c.detail
    c = cells[("prefill_1m", "yoco-gret")]  # N^2 through 32K-128K: 3000 * 32^2 ms at 1M
    assert c.how == paper.FORMULA and math.isclose(c.ratio, 3000.0 * 32**2 / (1000.0 * 32), rel_tol=1e-9)
    assert "N^2.00" in c.detail and "32K-128K" in c.detail
    c = cells[("throughput_512k", "yoco-gret")]
    assert (c.how, c.ratio) == (paper.MEASURED, 10.0) and "batch 24" in c.detail and "batch 1" in c.detail
    assert all(cells[(f.key, "yoco-swa")].how == paper.NOT_MEASURED for f in paper.FIGURES)
    table = paper.markdown(frame(rows), "NVIDIA H200")
    assert "| memory at 1M tokens | 9.4x | 7.50x (formula, NVIDIA H200) | not measured |" in table
    assert "| prefill time at 32K tokens | 2.87x | 3.00x (measured, NVIDIA H200) | not measured |" in table


def test_a_cpu_run_without_the_papers_lengths_says_not_measured():
    rows = [row("transformer", 4 * K, prefill_ms=10.0, peak_mem_prefill_bytes=1e9),
            row("yoco-swa", 4 * K, prefill_ms=5.0, peak_mem_prefill_bytes=5e8)]
    assert all(c.how == paper.NOT_MEASURED for c in paper.cells(frame(rows)))


def test_cpu_memory_is_the_models_own_share():
    r = dict(device="cpu", peak_mem_prefill_bytes=300e6, peak_mem_decode_bytes=310e6, mem_before_model_bytes=250e6)
    assert paper.peak_bytes(r) == 60e6
