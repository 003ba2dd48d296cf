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
    _c("arch", "", "architecture (bench.archs): yoco-gret, yoco-swa, transformer, transformer-swa, hf-llama or a "
                   "registered one"),
    _c("preset", "", "model size preset (yoco.config.PRESETS)"),
    _c("self_decoder", "", "YOCO's self-decoder (gret or swa); empty for other archs"),
    _c("batch", "sequences", "sequences per prefill and per decode step"),
    _c("seq_len", "tokens", "prompt length"),
    _c("gen_len", "tokens", "decode steps in one pass from the prompt's end (the cache holds seq_len + gen_len)"),
    _c("window", "tokens", "sliding window W (windowed archs only)"),
    _c("bitnet", "", "BitNet weights: none, 1bit or 1.58bit (packed for inference)"),
    _c("dtype", "", "model dtype"),
    _c("device", "", "cpu or cuda"),
    _c("device_name", "", "CPU model or GPU name"),
    _c("backend", "", "backend the case asked for: auto, torch or '+'-joined optional parts (fla, flash_attn, "
       "apex, splitkv)"),
    _c("backend_used", "", "optional parts that really ran (those the model uses, on CUDA; 'auto' resolved "
       "where the model was built), else torch"),
    _c("backends_present", "", "optional backends installed on this machine, with versions"),
    _c("decode_mode", "", "how the decode step ran: eager (model.decode_step), graph (the eager step captured once "
       "as a CUDA graph and replayed, yoco.graphs; CUDA only) or compile (torch.compile via compile_decode: "
       "reduce-overhead, i.e. CUDA graphs, on CUDA)"),
    _c("prefill_chunk", "tokens", "prefill in chunks of this many tokens, each over the cache the earlier ones "
       "filled (model.prefill(..., chunk_size)); empty: the whole prompt at once"),
    _c("attention_kernels", "", "each distinct attention call of the warm-up and memory pass with the kernel it "
       "got and its count: SDPA (query heads x length, key/value heads x length, head width, dtype, causal, mask, "
       "gqa: flash, efficient, cudnn or math, as torch picked), FlexAttention, and the gated-retention form (fla "
       "or torch); calls inside torch.compile or a CUDA graph capture are not seen, and with compile only the "
       "prefill is (bench.measure.attention)"),
    _c("params", "parameters", "logical parameter count (packed BitNet weights count as the weights they stand for)"),
    _c("weight_bytes", "B", "bytes of parameters and buffers as stored (packed for BitNet)"),
    # prefill
    _c("prefill_ms", "ms", "median time of one prefill of the prompt (all sequences of the batch; "
       "model.prefill_step from position 0: the input checks and the rewind are off the clock); with --processes "
       "N the median of the N processes' medians"),
    _c("prefill_ms_p25", "ms", "25th percentile of the timed prefills (all processes' pooled); empty with fewer "
       "than 3"),
    _c("prefill_ms_p75", "ms", "75th percentile of the timed prefills (all processes' pooled); empty with fewer "
       "than 3"),
    _c("prefill_ms_ci_low", "ms", "lower end of a 95% confidence interval for prefill_ms from the per-process "
       "medians (order statistics, bench.measure.aggregate); empty with fewer than 6 processes"),
    _c("prefill_ms_ci_high", "ms", "upper end of that interval"),
    _c("prefill_tok_s", "tokens/s", "batch * seq_len / prefill_ms"),
    _c("prefill_tok_s_ci_low", "tokens/s", "batch * seq_len / prefill_ms_ci_high"),
    _c("prefill_tok_s_ci_high", "tokens/s", "batch * seq_len / prefill_ms_ci_low"),
    # decode
    _c("decode_ms_per_step", "ms", "median over the timed decode samples of one greedy step's time (the step and "
       "the argmax of its logits). A sample is at least 50 ms of passes, each pass gen_len steps from the prompt's "
       "end (the context walks seq_len .. seq_len + gen_len - 1 in every pass; rewinds off the clock); its value "
       "is its time over its steps. With --processes N the median of the N processes' medians"),
    _c("decode_ms_per_step_p25", "ms", "25th percentile of the decode samples (all processes' pooled); empty with "
       "fewer than 3"),
    _c("decode_ms_per_step_p75", "ms", "75th percentile of the decode samples (all processes' pooled); empty with "
       "fewer than 3"),
    _c("decode_ms_per_step_ci_low", "ms", "lower end of a 95% confidence interval for decode_ms_per_step from the "
       "per-process medians; empty with fewer than 6 processes"),
    _c("decode_ms_per_step_ci_high", "ms", "upper end of that interval"),
    _c("decode_tok_s", "tokens/s", "batch / decode_ms_per_step: the same estimator"),
    _c("decode_tok_s_ci_low", "tokens/s", "batch / decode_ms_per_step_ci_high"),
    _c("decode_tok_s_ci_high", "tokens/s", "batch / decode_ms_per_step_ci_low"),
    _c("decode_passes", "", "passes of gen_len steps in each timed decode sample (enough for 50 ms)"),
    _c("compile_graphs", "", "graphs torch.compile produced for the decode step (compile mode; 0 otherwise)"),
    _c("compile_recompiles", "", "of those, recompilations (each compilation of the fullgraph step is one graph); "
       "the timed loops run under torch.compiler.set_stance('fail_on_recompile'), so none happened on the clock"),
    _c("cuda_graph_replayed", "", "whether every timed decode step replayed a CUDA graph (torch.cuda.CUDAGraph."
       "replay calls counted over the timed steps: ours in graph mode, inductor's in compile mode on CUDA)"),
    # memory
    _c("peak_mem_prefill_bytes", "B", "peak memory during one prefill: the CUDA allocator's allocated peak after "
       "a reset (cuda), the process's peak resident set size VmHWM after a reset (cpu); with --processes N the "
       "largest of the processes'"),
    _c("peak_mem_prefill_reserved_bytes", "B", "peak of the CUDA caching allocator's reserved memory during one "
       "prefill, after empty_cache() and a reset: the phase's own blocks", CUDA),
    _c("peak_mem_prefill_nvml_bytes", "B", "peak of NVML's device-wide used memory during the prefill, polled "
       "every 2 ms in a side thread (the whole card: CUDA context and other processes included)", CUDA),
    _c("peak_mem_decode_bytes", "B", "peak memory over the decode steps before the timed phase: warm-up and a "
       "gen_len-step pass, and in graph or compile mode the capture or compilation, where a step's activations "
       "are allocated (a replay allocates nothing): comparable across modes (as peak_mem_prefill_bytes)"),
    _c("peak_mem_decode_reserved_bytes", "B", "peak of the CUDA caching allocator's reserved memory over the same "
       "window, after empty_cache() and a reset (a graph's private pool included)", CUDA),
    _c("peak_mem_decode_nvml_bytes", "B", "peak of NVML's device-wide used memory over the same window, polled "
       "every 2 ms", CUDA),
    _c("mem_before_model_bytes", "B", "memory in use before the model was built: allocated (cuda), the "
       "process's resident set (cpu: Python and torch themselves)"),
    _c("memory_source", "", "where the memory columns come from: cuda_allocator, cpu_vmhwm or cpu_vmhwm_unreset"),
    # cache
    _c("kv_cache_bytes", "B", "bytes of the cache tensors allocate_cache(batch, seq_len + gen_len) allocated"),
    _c("kv_cache_bytes_formula", "B", "the same from the config alone (model.kv_cache_bytes); a case whose "
       "figures disagree is an error"),
    _c("kv_cache_bytes_allocated", "B", "the CUDA allocator's growth around allocate_cache: at least "
       "kv_cache_bytes and at most 512 B per tensor more (its rounding), else the case is an error", CUDA),
    _c("kv_cache_bytes_per_token", "B", "growth of the cache per token of context (all sequences)"),
    _c("kv_cache_fixed_bytes", "B", "the part of the cache that does not grow with the context"),
    # efficiency
    _c("prefill_flops", "FLOP", "useful matmul FLOPs of one prefill (2 per multiply-add; causal products as "
       "their lower triangle, gRet's chunks without padding, YOCO's early exit; bench.measure.roofline)"),
    _c("prefill_flops_dtypes", "", "how prefill_flops split by the dtype they run in: the model's, except gRet's "
       "chunk products off CUDA (float32) and packed BitNet layers (int8 on CUDA, float32 elsewhere)"),
    _c("prefill_mfu", "fraction", "the time prefill_flops would take at this run's measured matmul rate of each "
       "part's dtype (env.json matmul_flops_s_by_dtype), over prefill_ms"),
    _c("prefill_mfu_peak", "fraction", "the same against the GPU's data-sheet peaks (bench.measure.peaks); empty "
       "for an unknown GPU and on a CPU"),
    _c("decode_bytes_per_step", "B", "bytes one decode step moves, the model's own count "
       "(decode_bytes_per_step(batch, context)) averaged over the timed steps' contexts: weights (the embedding as "
       "the rows looked up); YOCO: per self layer its gRet state read and written, or its ring's slots in the "
       "window read, and the global cache read by EACH cross layer; baseline: per layer its own cache read; new "
       "keys and values written"),
    _c("decode_mbu", "fraction", "decode_bytes_per_step / decode_ms_per_step / this run's measured read bandwidth "
       "(env.json read_bandwidth_bytes_s)"),
    _c("decode_mbu_peak", "fraction", "the same against the GPU's data-sheet memory bandwidth; empty for an unknown "
       "GPU and on a CPU"),
    # the run
    _c("repeats", "", "timed repeats per phase and process (fewer than asked where the suite's time budget cut "
       "them)"),
    _c("processes", "", "processes whose figures the row combines (--processes; 0 when the first one failed)"),
    _c("calibration_before_ms", "ms", "a fixed fp32 matmul + copy sized from the case (bench.measure.roofline."
       "Calibration), timed before the timed phases, do_bench style; with --processes N the median"),
    _c("calibration_after_ms", "ms", "the same, timed after them"),
    # the GPU's state (NVML), before the model is built and after the timed phases
    _c("gpu_sm_clock_mhz_before", "MHz", "SM clock before the case", CUDA),
    _c("gpu_sm_clock_mhz_after", "MHz", "SM clock after the timed phases", CUDA),
    _c("gpu_mem_clock_mhz_before", "MHz", "memory clock before the case", CUDA),
    _c("gpu_mem_clock_mhz_after", "MHz", "memory clock after the timed phases", CUDA),
    _c("gpu_temp_c_before", "C", "GPU temperature before the case", CUDA),
    _c("gpu_temp_c_after", "C", "GPU temperature after the timed phases", CUDA),
    _c("gpu_power_w_before", "W", "board power draw before the case", CUDA),
    _c("gpu_power_w_after", "W", "board power draw after the timed phases", CUDA),
    _c("gpu_throttle_reasons", "", "NVML clock-event (throttle) reasons seen before, during (polled every 50 ms) "
       "or after the timed phases, '+'-joined", CUDA),
    _c("gpu_throttled", "", "whether any of them is a slowdown (power cap, thermal, hardware slowdown, power "
       "brake): the case's figures ran on pulled-down clocks", CUDA),
    _c("memory_cap_bytes", "B", "the memory cap the case ran under: on CUDA a real limit on its allocator (the "
       "suite's memory_cap_gb); for batch = \"max\" also the memory the batch had to fit in (default the "
       "device's; on a CPU judged by the measured peak above mem_before_model_bytes)"),
    _c("max_batch_search", "", "batch = \"max\" only: the batches tried and whether each fitted under the cap, "
       "then the one measured"),
    _c("estimated_bytes", "B", "weights + cache estimated on the meta device before the case ran"),
    _c("estimated_activation_bytes", "B", "tensor memory one prefill allocates at once on top of weights and "
       "cache (one chunk's activations), from the case's prefill run on the meta device with a fused attention "
       "kernel's allocations (bench.measure.footprint)"),
    _c("estimated_peak_bytes", "B", "the prefill's estimated peak, estimated_bytes + estimated_activation_bytes "
       "(empty where the arch's code does not run on the meta device): a case whose estimate exceeds the memory "
       "available (or its cap) is skipped before it runs, and batch = \"max\" starts its search from it"),
    _c("elapsed_s", "s", "wall time of the whole case, process start to row"),
    _c("status", "", "ok, oom, skipped, timeout (killed after the suite's case_timeout_s) or error"),
    _c("error", "", "why a case is not ok (one line)"),
]

SAMPLES: list[Column] = [
    _c("case_id", "", "the case (results.csv)"),
    _c("metric", "", "prefill_ms or decode_ms_per_step"),
    _c("repeat", "", "index of the timed prefill or decode sample within its process"),
    _c("value", "ms", "the timed value: one prefill, or a decode sample's time over its steps"),
    _c("calibration_ms", "ms", "the calibration of the sample's case process: the geometric mean of its "
       "calibration_before_ms and calibration_after_ms (the same for all of its samples)"),
    _c("normalized", "", "value / calibration_ms"),
    _c("process", "", "which of the case's processes (0 .. N-1 with --processes N) took the sample"),
]

# quality.csv (`python -m bench quality`): one row per trained model x task point.
QUALITY: list[Column] = [
    _c("model_id", "", "arch-preset-window-bitnet: the model (its checkpoint is checkpoints/<model_id>.pt)"),
    _c("arch", "", "architecture (bench.archs)"),
    _c("preset", "", "model size preset (yoco.config.PRESETS), with the suite's [quality] model overrides"),
    _c("window", "tokens", "sliding window W (windowed archs only)"),
    _c("bitnet", "", "none, or the BitNet mode trained with fake quantization (straight-through estimator)"),
    _c("d_model", "", "model width"),
    _c("n_layers", "", "layers (YOCO: self- plus cross-decoder)"),
    _c("task", "", "mqar (multi-query associative recall) or needle (one key-value pair in a haystack)"),
    _c("pairs", "", "mqar: key-value pairs in each sequence, every key queried once (empty for needle)"),
    _c("distance", "tokens", "needle: query position minus the needle key's position (empty for mqar)"),
    _c("seq_len", "tokens", "training and evaluation sequence length"),
    _c("accuracy", "", "fraction of answers whose argmax over the whole vocabulary is the right value"),
    _c("answers", "", "answers evaluated for this row (eval_examples sequences; mqar: x pairs)"),
    _c("chance", "", "1 / the number of values: accuracy of a guess that knows only that a value comes"),
    _c("receptive_field", "tokens", "how far back the last position can see: n_layers x (window - 1) + 1 for "
       "transformer-swa; empty where unbounded (full attention, YOCO's global cache)"),
    _c("kv_cache_bytes", "B", "allocate_cache(1, seq_len) in float32: the cache at the evaluation length, batch 1"),
    _c("params", "parameters", "logical parameter count"),
    _c("weight_bytes", "B", "weights as stored for inference (BitNet layers packed)"),
    _c("train_steps", "", "optimizer steps"),
    _c("train_seconds", "s", "wall time of training, summed over resumed sessions (evaluation excluded)"),
    _c("final_loss", "nats", "mean answer cross-entropy over the last 50 training steps"),
]

RESULT_NAMES = [c.name for c in RESULTS]
QUALITY_NAMES = [c.name for c in QUALITY]
SAMPLE_NAMES = [c.name for c in SAMPLES]
UNITS = {c.name: c.unit for c in RESULTS}


def markdown(columns: list[Column] = RESULTS) -> str:
    """The columns as a GitHub table (README's is generated from this)."""
    lines = ["| column | unit | meaning | devices |", "|---|---|---|---|"]
    lines += [f"| `{c.name}` | {c.unit or '-'} | {c.meaning} | {c.devices} |" for c in columns]
    return "\n".join(lines)


README_MARKERS = {"results": RESULTS, "samples": SAMPLES, "quality": QUALITY}


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
