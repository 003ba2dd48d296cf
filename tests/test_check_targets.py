"""scripts/check_targets.py on synthetic run directories written in the harness's own format."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from bench.show import report

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_targets.py"
spec = importlib.util.spec_from_file_location("check_targets", SCRIPT)
check_targets = importlib.util.module_from_spec(spec)
sys.modules["check_targets"] = check_targets  # dataclasses look their module up there
spec.loader.exec_module(check_targets)

K, M = 1024, 1 << 20


def row(arch, preset, seq_len, *, compile=False, device="cuda", status="ok", batch=1, window=None, **values):
    base = dict(arch=arch, preset=preset, seq_len=seq_len, batch=batch, gen_len=64, bitnet="none",
                dtype="bfloat16", device=device, backend="torch", compile=compile, status=status,
                window=window if window is not None else (1024 if arch == "yoco-swa" else None))
    base["case_id"] = (f"{arch}-{preset}-b{batch}-s{seq_len}-{device}-{'compiled' if compile else 'eager'}")
    return {**base, **values}


def write_run(path: Path, rows: list[dict], device="cuda"):
    path.mkdir()
    report.append_rows(path / "results.csv", report.COLUMNS, rows)
    env = dict(suite="synthetic", device=device, device_name="H100 (synthetic)", git_commit="abc",
               versions={"torch": "2.11"}, copy_bandwidth_bytes_s=3.0e12,
               matmul_flops_s_by_dtype={"bfloat16": 7.0e14})
    (path / "env.json").write_text(json.dumps(env))
    return path


def synthetic_rows() -> list[dict]:
    rows = []
    mbu = {("transformer", "1.4b"): 0.65, ("yoco-gret", "1.4b"): 0.8, ("yoco-swa", "1.4b"): 0.75,
           ("transformer", "3b"): 0.72, ("yoco-gret", "3b"): 0.5}  # yoco-swa 3b: only a CPU row
    for (arch, preset), value in mbu.items():
        rows.append(row(arch, preset, 4 * K, compile=True, decode_mbu=value, prefill_ms=10.0,
                        decode_ms_per_step=5.5 if arch == "transformer" else 4.0))
    rows.append(row("transformer", "1.4b", 4 * K, decode_mbu=0.9))  # eager: compiled rows win
    rows.append(row("yoco-swa", "3b", 4 * K, compile=True, device="cpu", decode_mbu=0.99))
    rows.append(row("hf-llama", "1.4b", 4 * K, compile=True, prefill_ms=11.0, decode_ms_per_step=5.0))
    rows.append(row("transformer", "3b", 8 * K, prefill_mfu=0.55))
    rows.append(row("transformer", "3b", 32 * K, prefill_mfu=0.45, prefill_ms=3000.0))
    rows.append(row("transformer", "3b", 32 * K, batch=4, prefill_mfu=0.9, prefill_ms=1.0))  # batch 4: ignored
    for n in (32 * K, 128 * K, 512 * K):  # time ~ N^1.05 (gRet) and ~ N^1.5 (SWA)
        rows.append(row("yoco-gret", "3b", n, prefill_ms=1000.0 * (n / (32 * K)) ** 1.05))
        rows.append(row("yoco-swa", "3b", n, prefill_ms=2000.0 * (n / (32 * K)) ** 1.5))
    rows.append(row("yoco-gret", "3b", M, prefill_ms=1000.0 * 32**1.05, peak_mem_prefill_bytes=18e9,
                    peak_mem_prefill_reserved_bytes=20e9, peak_mem_decode_reserved_bytes=19e9))
    rows.append(row("yoco-swa", "3b", M, status="oom", error="OutOfMemoryError: CUDA out of memory"))
    rows.append(row("transformer", "3b", M, status="skipped", estimated_bytes=120e9,
                    error="estimated weights + cache 111.76 GiB exceed the 79.10 GiB available on cuda"))
    return rows


@pytest.fixture
def results(tmp_path):
    run = write_run(tmp_path / "run", synthetic_rows())
    found, _ = check_targets.check([run])
    return {(r.target.split(" (")[0].split(" >=")[0].split(" <")[0], r.scope): r for r in found}


def test_decode_mbu(results):
    r = results[("decode MBU", "transformer 1.4b 4K")]
    assert (r.status, r.value) == ("not met", "0.650")  # the compiled row, not the better eager one
    assert (results[("decode MBU", "yoco-gret 1.4b 4K")].status, results[("decode MBU", "transformer 3b 4K")].status,
            results[("decode MBU", "yoco-gret 3b 4K")].status) == ("met", "met", "not met")
    assert results[("decode MBU", "yoco-swa 3b 4K")].status == "not measured"  # only a CPU row


def test_prefill_mfu(results):
    assert results[("prefill MFU", "transformer 3b 8K")].status == "met"
    r = results[("prefill MFU", "transformer 3b 32K")]
    assert (r.status, r.value) == ("not met", "0.450")  # the batch-4 row (0.9) does not count


def test_yoco_prefill_slope(results):
    gret = results[("YOCO prefill slope", "yoco-gret 3b torch, 32K-1M")]
    swa = results[("YOCO prefill slope", "yoco-swa w1024 3b torch, 32K-512K")]
    assert (gret.status, gret.value) == ("met", "1.050")
    assert (swa.status, swa.value) == ("not met", "1.500")


def test_fits_in_80gb(results):
    gret = results[("3b at 1M fits in 80 GB", "yoco-gret 3b 1M")]
    assert (gret.status, gret.value) == ("met", "20.0 GB")  # the larger reserved peak
    swa = results[("3b at 1M fits in 80 GB", "yoco-swa 3b 1M")]
    assert (swa.status, swa.value) == ("not met", "oom")


def test_ours_against_hf_llama(results):
    prefill = results[("transformer at least as fast as hf-llama", "prefill 1.4b 4K compiled")]
    decode = results[("transformer at least as fast as hf-llama", "decode 1.4b 4K compiled")]
    assert (prefill.status, prefill.value) == ("met", "hf/ours 1.100")
    assert (decode.status, decode.value) == ("not met", "hf/ours 0.909")


def test_paper_ratios(results):
    memory = results[("memory ratio", "3b 1M, transformer / yoco-gret")]
    assert (memory.status, memory.value) == ("not met", "6.00x") and "formula" in memory.detail
    assert results[("memory ratio", "3b 1M, transformer / yoco-swa")].status == "not measured"
    at_32k = results[("prefill ratio at 32K", "3b 32K, transformer / yoco-gret")]
    assert (at_32k.status, at_32k.value) == ("met", "3.00x")
    assert results[("prefill ratio at 32K", "3b 32K, transformer / yoco-swa")].status == "not met"
    at_1m = results[("prefill ratio at 1M", "3b 1M, transformer / yoco-gret")]
    assert at_1m.status == "not measured" and "32K, where the ratio is 3.00x" in at_1m.detail


def test_cli_prints_every_target_and_a_count(tmp_path, capsys):
    run = write_run(tmp_path / "run", synthetic_rows())
    assert check_targets.main([str(run), "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "H100 (synthetic)" in out and "3000.0 GB/s" in out
    last = out.strip().splitlines()[-1]
    saved = json.loads((tmp_path / "t.json").read_text())
    counts = {s: sum(r["status"] == s for r in saved) for s in ("met", "not met", "not measured")}
    assert last == f"{counts['met']} met, {counts['not met']} not met, {counts['not measured']} not measured"
    assert counts["met"] >= 6 and counts["not met"] >= 6


def test_not_a_run_directory(tmp_path, capsys):
    assert check_targets.main([str(tmp_path)]) == 2
    assert "needs results.csv and env.json" in capsys.readouterr().err
