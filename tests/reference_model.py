"""An independent YOCO and baseline Transformer for the tests, written from the formulas of the
team's architecture notes (YOCO.md) and nothing else.

It shares no code with yoco/ or baselines/: it reads a model's weights by name from its
state_dict and its sizes from the config's plain fields. Everything is float64 and one token at
a time, as the formulas are written: the gRet state recurrence, softmax as a loop over keys,
RMSNorm, SwiGLU and rotary spelled out. One sequence at a time (tests loop over the batch).

    ref = ReferenceModel(model.state_dict(), model.config, arch="gret")   # or "swa", "transformer", ...
    logits = ref.forward(tokens)       # [T, V]: every position, a fresh sequence
    logits = ref.step(token)           # [V]: one more token of the current sequence

numerics="llama" (the default, as Llama): rotary frequencies theta^(-2j/D) on the pairs (j, j + D/2)
(rotate-half), norm epsilon 1e-6; "unilm" (the YOCO authors' code, microsoft/unilm):
theta^(-j/(D/2-1)) (a linspace of exponents from 0 to 1) on the pairs (2j, 2j+1), token
embeddings times sqrt(d_model), norm epsilon 1e-5.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64
ARCHS = ("gret", "swa", "transformer", "transformer_swa")
NUMERICS = ("llama", "unilm")
NORM_EPS = {"llama": 1e-6, "unilm": 1e-5}


# --- elementwise maths, written out ---


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps), times the learned scale when there is one."""
    mean_square = sum(v * v for v in x.tolist()) / x.shape[0]
    y = x / math.sqrt(mean_square + eps)
    return y if weight is None else y * weight


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def silu(z: torch.Tensor) -> torch.Tensor:
    return torch.tensor([v * sigmoid(v) for v in z.tolist()], dtype=F64)


def softmax_attention(q: torch.Tensor, keys: list, values: list, scale: float) -> torch.Tensor:
    """sum_s softmax_s(scale * q . k_s) v_s, the softmax as an explicit loop over the keys."""
    scores = [scale * float(q @ k) for k in keys]
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    out = torch.zeros_like(values[0])
    for w, v in zip(weights, values):
        out += (w / total) * v
    return out


class Numerics:
    """Rotary, the embedding scale and the norms' epsilon of one numerics convention."""

    def __init__(self, kind: str, theta: float, d_model: int, eps: float | None = None):
        if kind not in NUMERICS:
            raise ValueError(f"unknown numerics {kind!r}: valid values are {', '.join(map(repr, NUMERICS))}")
        self.kind, self.theta = kind, theta
        self.eps = NORM_EPS[kind] if eps is None else eps
        self.embed_scale = math.sqrt(d_model) if kind == "unilm" else 1.0

    def rotate(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        """Pair j, (a, b), turns by the angle pos * f_j: a' = a cos - b sin, b' = b cos + a sin."""
        D = x.shape[0]
        half = D // 2
        xs = x.tolist()
        out = list(xs)
        for j in range(half):
            if self.kind == "llama":
                f, a, b = self.theta ** (-2 * j / D), j, j + half
            else:
                f, a, b = self.theta ** (-j / (half - 1)), 2 * j, 2 * j + 1
            c, s = math.cos(pos * f), math.sin(pos * f)
            out[a] = xs[a] * c - xs[b] * s
            out[b] = xs[b] * c + xs[a] * s
        return torch.tensor(out, dtype=F64)


class Weights:
    """Tensors read by name under a prefix (`Weights.of(state_dict)`: float64 copies on the CPU)."""

    def __init__(self, tensors: dict, prefix: str = ""):
        self.tensors, self.prefix = tensors, prefix

    @classmethod
    def of(cls, state_dict: dict) -> Weights:
        return cls({k: v.detach().to("cpu", F64) for k, v in state_dict.items()})

    def __call__(self, name: str) -> torch.Tensor:
        return self.tensors[self.prefix + name]

    def under(self, prefix: str) -> Weights:
        return Weights(self.tensors, self.prefix + prefix)


def heads(x: torch.Tensor, n: int) -> list:
    d = x.shape[0] // n
    return [x[h * d:(h + 1) * d] for h in range(n)]


# --- the four token mixers, one token at a time; x is the normed input [d] ---


class GatedRetention:
    """gRet: per head, gamma_t = exp(logsigmoid(a_t) / tau), S_t = gamma_t S_{t-1} + k_t^T v_t with
    rotary q, k and k scaled by d_h^-0.5, o_t = q_t S_t; RMSNorm per head with no scale, heads
    concatenated, silu(g) * o, then W_o."""

    def __init__(self, w: Weights, n_heads: int, tau: float, num: Numerics):
        self.w, self.n_heads, self.tau, self.num = w, n_heads, tau, num
        d = w("wq.weight").shape[0]
        self.head_dim = d // n_heads
        self.state = [torch.zeros(self.head_dim, self.head_dim, dtype=F64) for _ in range(n_heads)]
        self.retained = None  # the last token's q_t S_t per head [H, d_h], before the norm

    def __call__(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        w = self.w
        q, k, v, g = (w(f"{name}.weight") @ x for name in ("wq", "wk", "wv", "wg"))
        a = (w("wa.weight") @ x).tolist()
        retained = []
        for h, (qh, kh, vh) in enumerate(zip(heads(q, self.n_heads), heads(k, self.n_heads), heads(v, self.n_heads))):
            log_decay = math.log(sigmoid(a[h])) / self.tau
            qh = self.num.rotate(qh, pos)
            kh = self.num.rotate(kh, pos) * self.head_dim**-0.5
            self.state[h] = math.exp(log_decay) * self.state[h] + torch.outer(kh, vh)
            retained.append(qh @ self.state[h])
        self.retained = torch.stack(retained)
        o = torch.cat([rms_norm(oh, None, self.num.eps) for oh in retained])
        return w("wo.weight") @ (silu(g) * o)


class Attention:
    """Causal softmax attention with rotary on q and k and grouped-query heads (query head h reads
    key/value head h // (H / H_kv)); window=W keeps keys pos-W+1 .. pos, itself included. Scores
    are scaled by d_h^-0.5. Keeps every past key and value (no ring: that is the model's business)."""

    def __init__(self, w: Weights, n_heads: int, n_kv_heads: int, num: Numerics, window: int | None = None):
        self.w, self.n_heads, self.n_kv_heads, self.num, self.window = w, n_heads, n_kv_heads, num, window
        self.keys = [[] for _ in range(n_kv_heads)]
        self.values = [[] for _ in range(n_kv_heads)]

    def __call__(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        w = self.w
        for j, (kj, vj) in enumerate(zip(heads(w("wk.weight") @ x, self.n_kv_heads),
                                         heads(w("wv.weight") @ x, self.n_kv_heads))):
            self.keys[j].append(self.num.rotate(kj, pos))
            self.values[j].append(vj)
        first = 0 if self.window is None else max(0, pos - self.window + 1)
        outs = []
        group = self.n_heads // self.n_kv_heads
        for h, qh in enumerate(heads(w("wq.weight") @ x, self.n_heads)):
            qh = self.num.rotate(qh, pos)
            j = h // group
            outs.append(softmax_attention(qh, self.keys[j][first:pos + 1], self.values[j][first:pos + 1],
                                          qh.shape[0] ** -0.5))
        return w("wo.weight") @ torch.cat(outs)


class GlobalKV:
    """YOCO's one global cache: K = rotary(RMSNorm(X) W_K), V = RMSNorm(X) W_V of the
    self-decoder's output X, per key/value head, appended once per token for all cross layers."""

    def __init__(self, w: Weights, n_kv_heads: int, num: Numerics):
        self.w, self.n_kv_heads, self.num = w, n_kv_heads, num
        self.keys = [[] for _ in range(n_kv_heads)]
        self.values = [[] for _ in range(n_kv_heads)]

    def append(self, x: torch.Tensor, pos: int):
        h = rms_norm(x, self.w("kv_norm.weight"), self.num.eps)
        for j, (kj, vj) in enumerate(zip(heads(self.w("wk.weight") @ h, self.n_kv_heads),
                                         heads(self.w("wv.weight") @ h, self.n_kv_heads))):
            self.keys[j].append(self.num.rotate(kj, pos))
            self.values[j].append(vj)


class CrossAttention:
    """A cross layer: its own rotated queries over the shared global keys 0..pos (GQA)."""

    def __init__(self, w: Weights, n_heads: int, shared: GlobalKV, num: Numerics):
        self.w, self.n_heads, self.shared, self.num = w, n_heads, shared, num

    def __call__(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        group = self.n_heads // self.shared.n_kv_heads
        outs = []
        for h, qh in enumerate(heads(self.w("wq.weight") @ x, self.n_heads)):
            qh = self.num.rotate(qh, pos)
            j = h // group
            outs.append(softmax_attention(qh, self.shared.keys[j][:pos + 1], self.shared.values[j][:pos + 1],
                                          qh.shape[0] ** -0.5))
        return self.w("wo.weight") @ torch.cat(outs)


class Block:
    """Pre-norm: x += mixer(RMSNorm(x)); x += W2(silu(W1 h) * W3 h) with h = RMSNorm(x)."""

    def __init__(self, w: Weights, mixer, num: Numerics):
        self.w, self.mixer, self.num = w, mixer, num

    def __call__(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        w = self.w
        x = x + self.mixer(rms_norm(x, w("mixer_norm.weight"), self.num.eps), pos)
        h = rms_norm(x, w("ffn_norm.weight"), self.num.eps)
        return x + w("ffn.w2.weight") @ (silu(w("ffn.w1.weight") @ h) * (w("ffn.w3.weight") @ h))


class ReferenceModel:
    """YOCO (arch "gret" or "swa": a self-decoder of n_layers // 2 layers, then the global K/V,
    then n_layers - n_layers // 2 cross layers), the baseline ("transformer") or the baseline with
    every layer windowed ("transformer_swa", config.window), token by token."""

    def __init__(self, state_dict: dict, config, arch: str, numerics: str = "llama", eps: float | None = None):
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}: valid values are {', '.join(map(repr, ARCHS))}")
        self.weights, self.config, self.arch = Weights.of(state_dict), config, arch
        self.num = Numerics(numerics, config.rope_theta, config.d_model, eps)
        self.reset()

    def reset(self):
        """Start a new sequence: empty states and caches."""
        c, w, num = self.config, self.weights, self.num
        self.pos = 0
        if self.arch.startswith("transformer"):
            window = c.window if self.arch == "transformer_swa" else None
            self.layers = [Block(w.under(f"layers.{i}."), Attention(w.under(f"layers.{i}.mixer."), c.n_heads,
                                                                    c.n_kv_heads, num, window), num)
                           for i in range(c.n_layers)]
            return
        n_self = c.n_layers // 2
        self.layers = []
        for i in range(n_self):
            mw = w.under(f"self_layers.{i}.mixer.")
            if self.arch == "gret":
                mixer = GatedRetention(mw, c.n_self_heads, c.gret_tau, num)
            else:
                mixer = Attention(mw, c.n_self_heads, c.n_self_heads, num, window=c.window)
            self.layers.append(Block(w.under(f"self_layers.{i}."), mixer, num))
        self.shared = GlobalKV(w, c.n_kv_heads, num)
        self.cross = [Block(w.under(f"cross_layers.{i}."),
                            CrossAttention(w.under(f"cross_layers.{i}.mixer."), c.n_heads, self.shared, num), num)
                      for i in range(c.n_layers - n_self)]

    def step(self, token: int) -> torch.Tensor:
        """Logits [V] after one more token of the current sequence."""
        w, pos = self.weights, self.pos
        x = w("embed.weight")[int(token)] * self.num.embed_scale
        for layer in self.layers:
            x = layer(x, pos)
        if not self.arch.startswith("transformer"):
            # The residual stream entering the first cross layer is the self-decoder's output.
            self.shared.append(x, pos)
            for layer in self.cross:
                x = layer(x, pos)
        self.pos += 1
        return w("lm_head.weight") @ rms_norm(x, w("norm.weight"), self.num.eps)

    def forward(self, tokens) -> torch.Tensor:
        """Logits [T, V] of a new sequence, every position."""
        self.reset()
        return torch.stack([self.step(t) for t in torch.as_tensor(tokens).tolist()])
