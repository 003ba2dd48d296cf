"""The schema of what a run writes: every column of results.csv and samples.csv, its unit, what
it means and on which devices it is filled. results.csv's header is taken from here, README's
column table is generated from here (`python -m bench columns`), and a test checks that every
column the harness writes is documented here."""

from __future__ import annotations

from dataclasses import dataclass

ALL, CUDA, CPU = "all", "cuda", "cpu"


@dataclass(frozen=True)
class Column:
    name: str
    unit: str  # "" for names and labels
    meaning: str
    devices: str = ALL  # where it is filled: all, cuda or cpu (elsewhere it is empty)


def _c(name, unit, meaning, devices=ALL) -> Column:
    return Column(name, unit, meaning, devices)


RESULTS: list[Column] = [
    # what was run
    _c("case_id", "", "stable id built from the axis values only: the same on every machine and commit"),
    _c("arch", "", "architecture (bench.archs): yoco-gret, yoco-swa, transformer, hf-llama or a registered one"),
    _c("preset", "", "model size preset (yoco.config.PRESETS)"),
    _c("self_decoder", "", "YOCO's self-decoder (gret or swa); empty for other archs"),
    _c("batch", "sequences", "sequences per prefill and per decode step"),
    _c("seq_len", "tokens", "prompt length"),
    _c("gen_len", "tokens", "decode steps timed after the prompt"),
    _c("window", "tokens", "sliding window W (windowed archs only)"),
    _c("bitnet", "", "BitNet weights: none, 1bit or 1.58bit (packed for inference)"),
    _c("dtype", "", "model dtype"),
    _c("device", "", "cpu or cuda"),
    _c("device_name", "", "CPU model or GPU name"),
    _c("backend", "", "backend the case asked for: auto, torch or '+'-joined optional parts (fla, flash_attn, "
       "apex)"),
    _c("backend_used", "", "optional parts that really ran (those the model uses, on CUDA; 'auto' resolved "
       "where the model was built), else torch"),
    _c("backends_present", "", "optional backends installed on this machine, with versions"),
    _c("compile", "", "whether the decode step was compiled (compile_decode)"),
    _c("attention_kernels", "", "each distinct attention call of the warm-up and memory pass with the kernel it "
       "got and its count: SDPA (query heads x length, key/value heads x length, head width, dtype, causal, mask, "
       "gqa: flash, efficient, cudnn or math, as torch picked), FlexAttention, and the gated-retention form (fla "
       "or torch); calls inside torch.compile or a CUDA graph capture are not seen, and with compile only the "
       "prefill is (bench.measure.attention)"),
    _c("params", "parameters", "logical parameter count (packed BitNet weights count as the weights they stand for)"),
    _c("weight_bytes", "B", "bytes of parameters and buffers as stored (packed for BitNet)"),
    # prefill
    _c("prefill_ms", "ms", "median time of one prefill of the prompt (all sequences of the batch)"),
    _c("prefill_ms_p25", "ms", "25th percentile of the timed prefills"),
    _c("prefill_ms_p75", "ms", "75th percentile of the timed prefills"),
    _c("prefill_tok_s", "tokens/s", "batch * seq_len / prefill_ms"),
    # decode
    _c("decode_tok_s", "tokens/s", "batch * gen_len / total time of the timed decode steps"),
    _c("decode_ms_per_step", "ms", "median over the timed blocks of the mean time of one decode step"),
    _c("decode_ms_per_step_p25", "ms", "25th percentile of the blocks' mean step time"),
    _c("decode_ms_per_step_p75", "ms", "75th percentile of the blocks' mean step time"),
    # memory
    _c("peak_mem_prefill_bytes", "B", "peak memory during one prefill: the CUDA allocator's peak after a reset "
       "(cuda), the process's peak resident set size VmHWM after a reset (cpu)"),
    _c("peak_mem_prefill_reserved_bytes", "B", "peak of the CUDA caching allocator's reserved memory during one "
       "prefill", CUDA),
    _c("peak_mem_prefill_nvml_bytes", "B", "NVML's device-wide used memory read at the end of the prefill", CUDA),
    _c("peak_mem_decode_bytes", "B", "peak memory during gen_len decode steps (as peak_mem_prefill_bytes)"),
    _c("peak_mem_decode_reserved_bytes", "B", "peak of the CUDA caching allocator's reserved memory during decode",
       CUDA),
    _c("peak_mem_decode_nvml_bytes", "B", "NVML's device-wide used memory read at the end of the decode steps",
       CUDA),
    _c("mem_before_model_bytes", "B", "memory in use before the model was built: allocated (cuda), the "
       "process's resident set (cpu: Python and torch themselves)"),
    _c("memory_source", "", "where the memory columns come from: cuda_allocator, cpu_vmhwm or cpu_vmhwm_unreset"),
    # cache
    _c("kv_cache_bytes", "B", "bytes of the cache tensors allocate_cache(batch, seq_len + gen_len) allocated"),
    _c("kv_cache_bytes_formula", "B", "the same from the config alone (model.kv_cache_bytes)"),
    _c("kv_cache_bytes_per_token", "B", "growth of the cache per token of context (all sequences)"),
    _c("kv_cache_fixed_bytes", "B", "the part of the cache that does not grow with the context"),
    # efficiency
    _c("prefill_flops", "FLOP", "analytic matmul FLOPs of one prefill (bench.measure.roofline)"),
    _c("prefill_mfu", "fraction", "prefill_flops / prefill time / this machine's measured matmul rate"),
    _c("decode_bytes_per_step", "B", "bytes one decode step reads: weights (embedding as the rows looked up) "
       "plus the cache at the mean decode context"),
    _c("decode_mbu", "fraction", "decode_bytes_per_step / decode_ms_per_step / this machine's measured copy "
       "bandwidth"),
    # the run
    _c("repeats", "", "timed repeats per phase (fewer than asked where the suite's time budget cut them)"),
    _c("memory_cap_bytes", "B", "the memory cap the case ran under: on CUDA a real limit on its allocator (the "
       "suite's memory_cap_gb); for batch = \"max\" also the memory the batch had to fit in (default the "
       "device's; on a CPU judged by the measured peak above mem_before_model_bytes)"),
    _c("max_batch_search", "", "batch = \"max\" only: the batches tried and whether each fitted under the cap, "
       "then the one measured"),
    _c("estimated_bytes", "B", "weights + cache estimated on the meta device before the case ran"),
    _c("elapsed_s", "s", "wall time of the whole case, process start to row"),
    _c("status", "", "ok, oom, skipped or error"),
    _c("error", "", "why a case is not ok (one line)"),
]

SAMPLES: list[Column] = [
    _c("case_id", "", "the case (results.csv)"),
    _c("metric", "", "prefill_ms or decode_ms_per_step"),
    _c("repeat", "", "index of the timed repeat (prefill) or decode block"),
    _c("value", "ms", "the timed value"),
    _c("calibration_ms", "ms", "a fixed matmul + copy timed just before this sample (bench.measure.roofline)"),
    _c("normalized", "", "value / calibration_ms"),
]

RESULT_NAMES = [c.name for c in RESULTS]
SAMPLE_NAMES = [c.name for c in SAMPLES]
UNITS = {c.name: c.unit for c in RESULTS}


def markdown(columns: list[Column] = RESULTS) -> str:
    """The columns as a GitHub table (README's is generated from this)."""
    lines = ["| column | unit | meaning | devices |", "|---|---|---|---|"]
    lines += [f"| `{c.name}` | {c.unit or '-'} | {c.meaning} | {c.devices} |" for c in columns]
    return "\n".join(lines)


README_MARKERS = {"results": RESULTS, "samples": SAMPLES}


def readme_with_tables(text: str) -> str:
    """README text with each generated table (between `<!-- columns:NAME -->` and
    `<!-- /columns:NAME -->`) replaced by the current schema."""
    for name, cols in README_MARKERS.items():
        start, end = f"<!-- columns:{name} -->", f"<!-- /columns:{name} -->"
        if start not in text or end not in text:
            raise ValueError(f"README has no {start} ... {end} block")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{markdown(cols)}\n{end}{tail}"
    return text
