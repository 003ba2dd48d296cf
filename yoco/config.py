"""Model configs and named presets for YOCO and its decoder-only twin.

Choices the paper leaves open (README repeats them):
- vocab_size 100352 for the paper sizes: cl100k_base (100,277 tokens, the YOCO tokenizer)
  rounded up to a multiple of 128. Embedding and LM head are untied, as in Llama.
- n_kv_heads = n_heads (plain multi-head) below 3b: the paper's scaling table lists no GQA.
- gRet head width 256 at the paper sizes (n_self_heads = d_model / 256), 128 at 3b; SWA uses n_heads.
- the gRet state is kept in float32 whatever the model dtype (see yoco.ops.retention).
- the baseline's FFN width is 8/3 d (YOCO's 3 d), rounded to 64; at 3b (where YOCO's
  official FFN is 8192) it is 8832, between the gRet and SWA twins, so all stay within 5%.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from yoco.ops.retention import DEFAULT_CHUNK_SIZE

SELF_DECODERS = ("gret", "swa")
BITNET_MODES = ("none", "1bit", "1.58bit")
BACKEND_PARTS = ("auto", "torch", "fla", "flash_attn", "apex", "splitkv")
# "llama": Llama/HF conventions (rotate-half rotary with theta^(-2i/D), norm eps 1e-6, no embedding
# scale); "unilm": YOCO's authors' code (interleaved rotary with theta^(-i/(D/2-1)), norm eps 1e-5,
# embeddings times sqrt(d_model)). The cost of a model does not depend on it.
NUMERICS = ("llama", "unilm")
NORM_EPS = {"llama": 1e-6, "unilm": 1e-5}


@dataclass
class ModelConfig:
    """Fields shared by YOCO and the baseline Transformer."""

    vocab_size: int = 512
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    ffn_dim: int = 192
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    numerics: str = "llama"  # see NUMERICS
    norm_eps: float | None = None  # None: the numerics' own (NORM_EPS)
    bitnet: str = "none"
    # "auto" (every optional part that imports, on CUDA; resolved when the model is built, see
    # yoco.backends.resolve), "torch" (SDPA, FlexAttention, torch.nn.RMSNorm only) or a
    # '+'-joined subset of the optional parts, e.g. "fla+flash_attn", each used on CUDA tensors.
    backend: str = "auto"

    def __post_init__(self):
        check_choice("bitnet", self.bitnet, BITNET_MODES)
        check_choice("numerics", self.numerics, NUMERICS)
        if self.norm_eps is None:
            self.norm_eps = NORM_EPS[self.numerics]
        if not isinstance(self.backend, str):
            raise ValueError(f"backend must be a string like 'auto', 'torch' or 'fla', got {self.backend!r}")
        parts = self.backend.split("+")
        for part in parts:
            check_choice("backend", part, BACKEND_PARTS, shown=self.backend)
        if len(parts) > 1 and {"auto", "torch"} & set(parts):
            raise ValueError(f"backend {self.backend!r}: 'auto' and 'torch' stand alone; join only the optional "
                             f"parts with '+' (e.g. 'fla+flash_attn')")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "ffn_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @property
    def backends(self) -> frozenset[str]:
        return frozenset(self.backend.split("+"))

    @property
    def embed_scale(self) -> float:
        return self.d_model**0.5 if self.numerics == "unilm" else 1.0


@dataclass
class YOCOConfig(ModelConfig):
    """YOCO adds the self-decoder: its mixer, its head count and (SWA) its window."""

    self_decoder: str = "gret"
    n_self_heads: int = 2
    window: int = 64
    gret_tau: float = 16.0  # lam = logsigmoid(a) / tau
    chunk_size: int = DEFAULT_CHUNK_SIZE  # gRet chunk length in prefill (torch path; fla's kernel: 64)

    def __post_init__(self):
        super().__post_init__()
        check_choice("self_decoder", self.self_decoder, SELF_DECODERS)
        if self.d_model % self.n_self_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_self_heads ({self.n_self_heads})")
        if (self.d_model // self.n_self_heads) % 2:
            raise ValueError(f"self-decoder head width d_model/n_self_heads must be even, got "
                             f"{self.d_model // self.n_self_heads}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.n_layers < 2:
            raise ValueError(f"YOCO needs n_layers >= 2 (self- and cross-decoder), got {self.n_layers}")

    @property
    def self_head_dim(self) -> int:
        return self.d_model // self.n_self_heads

    @property
    def n_self_layers(self) -> int:
        return self.n_layers // 2

    @property
    def n_cross_layers(self) -> int:
        return self.n_layers - self.n_layers // 2


def check_choice(name: str, value, allowed, shown=None):
    if value not in allowed:
        raise ValueError(f"unknown {name} {shown if shown is not None else value!r}: "
                         f"valid values are {', '.join(map(repr, allowed))}")


def _paper(d, layers, heads, *, kv_heads=None, ffn=None, base_ffn=None, gret_head_dim=256,
           window=1024, vocab=100352, max_seq_len=1 << 20):
    """A preset row: YOCO's FFN is 3d, the baseline's 8/3 d rounded to 64 (unless given)."""
    return dict(
        vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads or heads,
        head_dim=d // heads, ffn_dim=ffn or 3 * d, max_seq_len=max_seq_len,
        base_ffn_dim=base_ffn or 64 * round(8 * d / 3 / 64),
        gret_heads=d // gret_head_dim, swa_heads=heads, window=window,
    )


# name -> fields; base_ffn_dim is the baseline's FFN, gret_heads/swa_heads the self-decoder's heads.
PRESETS: dict[str, dict] = {
    # CPU test size: a 512-token prefill well under a second.
    "tiny": dict(vocab_size=512, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16,
                 ffn_dim=192, base_ffn_dim=208, max_seq_len=8192, gret_heads=2, swa_heads=4, window=64),
    # The CPU suite's largest.
    "small": dict(vocab_size=4096, d_model=256, n_layers=8, n_heads=8, n_kv_heads=4, head_dim=32,
                  ffn_dim=768, base_ffn_dim=768, max_seq_len=16384, gret_heads=2, swa_heads=8, window=256),
    "160m": _paper(768, 12, 12),
    "400m": _paper(1024, 24, 16),
    "830m": _paper(1536, 24, 12),
    "1.4b": _paper(2048, 24, 16),
    "2.7b": _paper(2560, 32, 20),
    "6.8b": _paper(4096, 32, 32),
    "13b": _paper(5120, 40, 40),
    # Official YOCO-3B inference config: d 3072, FFN 8192, 26 layers, 24 heads, 8 KV heads, d_h 128.
    "3b": _paper(3072, 26, 24, kv_heads=8, ffn=8192, base_ffn=8832, gret_head_dim=128),
}


def yoco_config(preset: str, **overrides) -> YOCOConfig:
    row = _preset_row(preset)
    self_decoder = overrides.get("self_decoder", "gret")
    check_choice("self_decoder", self_decoder, SELF_DECODERS)
    fields = {k: v for k, v in row.items() if k in _field_names(YOCOConfig)}
    fields["n_self_heads"] = row["gret_heads"] if self_decoder == "gret" else row["swa_heads"]
    return _build(YOCOConfig, fields, overrides)


def transformer_config(preset: str, **overrides) -> ModelConfig:
    row = _preset_row(preset)
    fields = {k: v for k, v in row.items() if k in _field_names(ModelConfig)}
    fields["ffn_dim"] = row["base_ffn_dim"]
    return _build(ModelConfig, fields, overrides)


def _preset_row(preset: str) -> dict:
    check_choice("preset", preset, tuple(PRESETS))
    return PRESETS[preset]


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build(cls, fields: dict, overrides: dict):
    unknown = set(overrides) - _field_names(cls)
    if unknown:
        raise ValueError(f"unknown config field(s) {sorted(unknown)} for {cls.__name__}: "
                         f"valid fields are {sorted(_field_names(cls))}")
    return cls(**{**fields, **overrides})
