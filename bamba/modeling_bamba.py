"""Bamba: IBM's hybrid Mamba2 + attention decoder, with the SSD scan behind `bamba.ssd` strategies.

Readable top to bottom, in the order data flows: config, cache, norms, the Mamba2 mixer, attention,
MLP, decoder layer, model, loading. Parameter names are those of Hugging Face's
`transformers.BambaForCausalLM`, so its checkpoints load as they are, and with the same weights
the logits of every exact strategy match transformers' PyTorch path.

Left padding (batch > 1) never leaks: padded positions enter no conv or SSM state (their inputs
are zeroed, so the state stays exactly zero until a row's first real token) and no attention
(masked keys); positions, rotary angles and `independent`'s chunk boundaries count real tokens
only. So a padded row computes what it would alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import STRATEGIES, causal_conv1d, causal_conv1d_update, ssd, ssd_step
from .kernels.decode_attention import decode_attention
from .kernels.gemv import NormedRow, gemv, gemv_swiglu
from .kernels.rms_norm import add_rms_norm, rms_norm, rms_norm_gated, silu_mul
from .kernels.rotary import rotary_step
from .ssd import check_backend, get_strategy

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Config: the fields of Hugging Face's BambaConfig that the forward pass uses, with its defaults.


@dataclass
class BambaConfig:
    vocab_size: int = 128000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    attn_layer_indices: list[int] = field(default_factory=list)
    mamba_n_heads: int = 128
    mamba_d_head: int | None = None  # None ("auto" in HF): mamba_expand * hidden_size // mamba_n_heads
    mamba_n_groups: int = 1
    mamba_d_state: int = 256
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_chunk_size: int = 256
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5  # HF hard-codes 0.5 for Bamba: rotary on half of each head
    max_position_embeddings: int = 262144
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    dtype: str | None = None  # dtype of the stored weights; from_pretrained's default

    def __post_init__(self):
        if self.mamba_d_head in (None, "auto"):
            self.mamba_d_head = self.mamba_expand * self.hidden_size // self.mamba_n_heads
        self.attn_layer_indices = sorted(self.attn_layer_indices or [])
        self.time_step_limit = tuple(float(v) for v in (self.time_step_limit or (0.0, math.inf)))
        checks = [
            (self.mamba_n_heads * self.mamba_d_head == self.mamba_expand * self.hidden_size,
             "mamba_n_heads * mamba_d_head must equal mamba_expand * hidden_size"),
            (self.mamba_n_heads % self.mamba_n_groups == 0, "mamba_n_heads must be a multiple of mamba_n_groups"),
            (self.hidden_size % self.num_attention_heads == 0, "hidden_size must be a multiple of num_attention_heads"),
            (self.num_attention_heads % self.num_key_value_heads == 0,
             "num_attention_heads must be a multiple of num_key_value_heads"),
            (all(0 <= i < self.num_hidden_layers for i in self.attn_layer_indices),
             f"attn_layer_indices must lie in [0, {self.num_hidden_layers})"),
            (self.hidden_act == "silu", f"hidden_act {self.hidden_act!r} is not supported (only 'silu')"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"BambaConfig: {message}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_attention(self, layer: int) -> bool:
        return layer in self.attn_layer_indices

    def truncated(self, num_layers: int) -> "BambaConfig":
        """The first `num_layers` layers (the seed study's 4-layer performance mode)."""
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or \
                not 1 <= num_layers <= self.num_hidden_layers:
            raise ValueError(f"num_layers: expected an int in [1, {self.num_hidden_layers}], got {num_layers!r}")
        return replace(self, num_hidden_layers=num_layers,
                       attn_layer_indices=[i for i in self.attn_layer_indices if i < num_layers])

    @classmethod
    def from_dict(cls, d: dict) -> "BambaConfig":
        """From the contents of a Hugging Face config.json (old and new rope formats)."""
        if d.get("model_type") != "bamba":
            raise ValueError(f"model_type is {d.get('model_type')!r}, expected 'bamba'")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"rope type {rope.get('rope_type', rope.get('type'))!r} is not supported (only 'default')")
        for name in ("rope_theta", "partial_rotary_factor"):
            if name in rope:
                kwargs[name] = rope[name]
        # transformers >= 5 writes infinity as {"__float__": "Infinity"}.
        if isinstance(d.get("time_step_limit"), list):
            kwargs["time_step_limit"] = [float(v["__float__"]) if isinstance(v, dict) else v
                                         for v in d["time_step_limit"]]
        kwargs["dtype"] = d.get("dtype") or d.get("torch_dtype")
        try:
            return cls(**kwargs)
        except TypeError as err:  # a field of the wrong JSON type
            raise ValueError(f"BambaConfig: {err}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "BambaConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (a Bamba checkpoint directory has a config.json)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(d)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_dict(self) -> dict:
        """A config.json that transformers' BambaConfig reads back."""
        d = asdict(self)
        d["time_step_limit"] = list(self.time_step_limit)
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": d.pop("rope_theta"),
                                "partial_rotary_factor": d.pop("partial_rotary_factor")}
        return {"model_type": "bamba", "architectures": ["BambaForCausalLM"], **d}


def check_chunk_size(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 16 or \
            chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: expected a power of two >= 16, got {chunk_size!r}")
    return chunk_size


# ---------------------------------------------------------------------------------------------
# Cache: everything decoding needs from the past, allocated once for the whole generation.


class BambaCache:
    """Per layer: conv state (b, conv_dim, k-1) and fp32 SSM state (b, h, p, n) for Mamba2 layers,
    preallocated keys/values (b, kv_heads, max_length, head_dim) for attention layers.

    `length` counts filled positions (left padding included) and `slot` holds the same count on the
    device (where a decode step writes, without reading a host value: see `decode_step`); `seen`
    (b,) counts each row's real tokens, i.e. the position of its next token; `real` (b, max_length)
    marks real key positions.
    """

    def __init__(self, config: BambaConfig, batch_size: int, max_length: int, dtype: torch.dtype, device):
        self.max_length = max_length
        self.length = 0
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.padded = False  # whether any cached position is padding (then attention needs a mask)
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.real = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)
        conv_dim = config.mamba_expand * config.hidden_size + 2 * config.mamba_n_groups * config.mamba_d_state
        self.conv, self.ssm, self.keys, self.values = [], [], [], []
        for i in range(config.num_hidden_layers):
            mamba = not config.is_attention(i)
            kv_shape = (batch_size, config.num_key_value_heads, max_length, config.head_dim)
            self.conv.append(torch.zeros(batch_size, conv_dim, config.mamba_d_conv - 1, dtype=dtype, device=device)
                             if mamba else None)
            self.ssm.append(torch.zeros(batch_size, config.mamba_n_heads, config.mamba_d_head, config.mamba_d_state,
                                        dtype=torch.float32, device=device) if mamba else None)
            self.keys.append(None if mamba else torch.zeros(kv_shape, dtype=dtype, device=device))
            self.values.append(None if mamba else torch.zeros(kv_shape, dtype=dtype, device=device))


@dataclass
class Batch:
    """What every layer needs to know about the current call besides the hidden states."""

    mask: torch.Tensor | None       # (b, l) bool, False at left padding; None when there is none
    pads: list[int] | None          # left padding per row (host ints), when there is any
    attn_mask: torch.Tensor | None  # bool (b|1, 1, l, S) for SDPA; None: plain causal
    cos: torch.Tensor               # (b, l, rotary_dim) rotary angles at real-token positions
    sin: torch.Tensor
    positions: torch.Tensor         # (b, l) real-token position of each input
    cache: BambaCache | None
    strategy: str
    chunk_size: int
    backend: str                    # bamba.ssd's BACKENDS: the strategy's kernels or its PyTorch twin
    decay_rates: dict               # Mamba2 layer index -> its A = −exp(A_log), fp32 (h,)
    decode: bool = False            # one token per row after the cache (`decode_step`)


# ---------------------------------------------------------------------------------------------
# Norms


def _one_launch(x: torch.Tensor, backend: str) -> bool:
    """With the model's "triton" backend, the norms (with the residual add before them), the
    MLP's silu·up (for one row: with its gate and up projections) and one-row projections run as
    one Triton launch each, one-token attention as two, on CUDA at inference (`kernels.rms_norm`,
    `kernels.gemv`, `kernels.decode_attention`: the same expressions; they have no backward, so
    autograd keeps the PyTorch form, as does the "torch" backend)."""
    return backend == "triton" and x.is_cuda and not torch.is_grad_enabled()


def _one_row(x) -> bool:
    """x (a tensor or a `NormedRow`) holds one row: a batch-1 decode step, for `kernels.gemv`."""
    return x.shape[:-1].numel() == 1


def _deferred(x: torch.Tensor, weight: torch.Tensor, backend: str, defer: bool) -> bool:
    """Whether a norm of a decode step leaves its work to the projections that read it
    (`kernels.gemv.NormedRow`): one row, in the weight's dtype, under `_one_launch`. That saves a
    launch per norm, a few µs of each step."""
    return defer and _one_row(x) and weight.dtype == x.dtype and _one_launch(x, backend)


class BambaLinear(nn.Linear):
    """nn.Linear whose one-row calls (a batch-1 decode step) run `kernels.gemv`, which also takes
    a row whose norm is still to apply (`NormedRow`)."""

    def forward(self, x, backend: str = "torch"):
        if isinstance(x, NormedRow):
            y = gemv(x, self.weight, static_weight=True)
            return y if self.bias is None else y + self.bias
        if self.bias is None and _one_row(x) and _one_launch(x, backend):
            return gemv(x, self.weight, static_weight=True)
        return super().forward(x)


class BambaRMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x, backend: str = "torch", residual=None, defer: bool = False):
        """norm(x); with `residual`: (norm(s), s) for the residual stream s = residual + x (the
        one-launch form consumes both: s is written over residual, the norm over x). With `defer`,
        a one-row norm may come back as a `NormedRow` for the projections that read it (each of
        them writes s)."""
        if _deferred(x, self.weight, backend, defer):
            row = NormedRow(x, self.weight, self.eps, residual=residual)
            return row if residual is None else (row, row.stream)
        if residual is not None:
            if _one_launch(x, backend):
                return add_rms_norm(x, residual, self.weight, self.eps)
            x = residual + x
            return self(x, backend), x
        if _one_launch(x, backend):
            return rms_norm(x, self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class BambaRMSNormGated(nn.Module):
    """y·silu(gate), RMS-normalised per group of channels (one group per SSM group), in fp32."""

    def __init__(self, size: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y, gate, backend: str = "torch", defer: bool = False):
        if self.group_size == y.shape[-1] and gate.dtype == y.dtype and _deferred(y, self.weight, backend, defer):
            return NormedRow(y, self.weight, self.eps, gate=gate)
        if _one_launch(y, backend):
            return rms_norm_gated(y, gate, self.weight, self.group_size, self.eps)
        h = y.float() * F.silu(gate.float())
        h = h.unflatten(-1, (-1, self.group_size))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        # transformers' PyTorch scan returns fp32, so its norm multiplies the weight in fp32 too.
        return (self.weight.float() * h.flatten(-2)).to(gate.dtype)


# ---------------------------------------------------------------------------------------------
# Mamba2 mixer


class BambaMixer(nn.Module):
    """in_proj -> (gate, xBC, dt); causal conv1d + SiLU on xBC; SSD scan over (x, dt, B, C);
    gated RMSNorm with the gate; out_proj."""

    def __init__(self, config: BambaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.head_dim = config.mamba_n_heads, config.mamba_d_head
        self.n_groups, self.d_state = config.mamba_n_groups, config.mamba_d_state
        self.intermediate_size = config.mamba_expand * config.hidden_size
        self.conv_dim = self.intermediate_size + 2 * self.n_groups * self.d_state
        self.time_step_limit = config.time_step_limit
        self.in_proj = BambaLinear(config.hidden_size, self.intermediate_size + self.conv_dim + self.num_heads,
                                 bias=config.mamba_proj_bias)
        # nn.Conv1d only to keep HF's parameter layout (conv_dim, 1, k); causal_conv1d does the work.
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, config.mamba_d_conv, groups=self.conv_dim,
                                bias=config.mamba_conv_bias)
        self.dt_bias = nn.Parameter(torch.ones(self.num_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_heads))
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.norm = BambaRMSNormGated(self.intermediate_size, self.intermediate_size // self.n_groups,
                                      config.rms_norm_eps)
        self.out_proj = BambaLinear(self.intermediate_size, config.hidden_size, bias=config.mamba_proj_bias)

    def forward(self, hidden, batch: Batch):
        b, l, _ = hidden.shape
        cache, mask = batch.cache, batch.mask
        if mask is not None:
            hidden = hidden * mask[..., None]
        gate, xBC, dt = self.in_proj(hidden, batch.backend).split(
            [self.intermediate_size, self.conv_dim, self.num_heads], dim=-1)
        if mask is not None:  # pads feed the conv exactly what a sequence start does: zeros
            xBC = xBC * mask[..., None]

        weight = self.conv1d.weight[:, 0]
        conv_backend = "reference" if batch.backend == "torch" else None  # None: Triton on CUDA tensors
        if batch.decode:
            xBC = causal_conv1d_update(xBC[:, 0], cache.conv[self.layer], weight, self.conv1d.bias,
                                       backend=conv_backend)[:, None]
        else:
            conv_state = cache.conv[self.layer] if cache is not None and cache.length > 0 else None
            xBC, new_conv_state = causal_conv1d(xBC, weight, self.conv1d.bias, conv_state=conv_state,
                                                backend=conv_backend)
            if cache is not None:
                cache.conv[self.layer].copy_(new_conv_state)
        if mask is not None:  # x = 0 at pads: no input enters the (still zero) SSM state
            xBC = xBC * mask[..., None]
        bc = self.n_groups * self.d_state
        x, B, C = xBC.split([self.intermediate_size, bc, bc], dim=-1)

        A = batch.decay_rates[self.layer]
        ssm_args = dict(D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.time_step_limit,
                        strategy=batch.strategy, backend=batch.backend)
        if batch.decode:
            y = ssd_step(cache.ssm[self.layer], x.view(b, self.num_heads, self.head_dim), dt[:, 0], A,
                         B.view(b, self.n_groups, self.d_state), C.view(b, self.n_groups, self.d_state),
                         chunk_size=batch.chunk_size, position=batch.positions[:, 0], **ssm_args)
        else:
            y = self._scan(x.view(b, l, self.num_heads, self.head_dim), dt, A,
                           B.view(b, l, self.n_groups, self.d_state), C.view(b, l, self.n_groups, self.d_state),
                           batch, ssm_args)
        return self.out_proj(self.norm(y.reshape(b, l, -1), gate, batch.backend, batch.decode), batch.backend)

    def _scan(self, x, dt, A, B, C, batch: Batch, ssm_args):
        cache = batch.cache
        past = cache.length if cache is not None else 0
        chunk_local = get_strategy(batch.strategy).chunk_local
        if chunk_local and past > 0:
            raise ValueError(f"strategy {batch.strategy!r} is chunk-local: a cached sequence can only be "
                             "continued one token at a time")
        initial_state = cache.ssm[self.layer] if cache is not None and past > 0 else None
        if chunk_local and batch.pads and any(batch.pads):
            # Chunk boundaries must count real tokens: scan each row without its left padding.
            y = torch.zeros_like(x)
            states = []
            for i, pad in enumerate(batch.pads):
                y[i:i + 1, pad:], state = ssd(x[i:i + 1, pad:], dt[i:i + 1, pad:], A, B[i:i + 1, pad:],
                                              C[i:i + 1, pad:], chunk_size=batch.chunk_size, **ssm_args)
                states.append(state)
            final_state = torch.cat(states)
        else:
            y, final_state = ssd(x, dt, A, B, C, chunk_size=batch.chunk_size, initial_state=initial_state, **ssm_args)
        if cache is not None:
            cache.ssm[self.layer].copy_(final_state)
        return y


# ---------------------------------------------------------------------------------------------
# Attention: grouped KV heads, partial rotary embedding, torch SDPA


def rotary_angles(positions: torch.Tensor, config: BambaConfig, dtype: torch.dtype):
    """cos, sin (b, l, rotary_dim) for integer positions (b, l); rotary_dim = head_dim * partial factor."""
    dim = int(config.head_dim * config.partial_rotary_factor)
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float) / dim))
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(t, cos, sin):
    """Rotate the first rotary_dim channels of t (b, heads, l, head_dim) (rotate-half convention)."""
    dim = cos.shape[-1]
    rot, rest = t[..., :dim], t[..., dim:]
    x1, x2 = rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


class BambaAttention(nn.Module):
    def __init__(self, config: BambaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = BambaLinear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = BambaLinear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = BambaLinear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = BambaLinear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, hidden, batch: Batch):
        b, l, _ = hidden.shape
        q = self.q_proj(hidden, batch.backend).view(b, l, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden, batch.backend).view(b, l, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden, batch.backend).view(b, l, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cache = batch.cache
        if batch.decode:  # write at the device-side slot and attend to every cached key (mask: cache.real)
            keys, values = cache.keys[self.layer], cache.values[self.layer]
            if _one_launch(q, batch.backend):  # rotary and both writes in one launch
                q = rotary_step(q, k, v, batch.cos, batch.sin, keys, values, cache.slot)
            else:
                q, k = apply_rotary(q, batch.cos, batch.sin), apply_rotary(k, batch.cos, batch.sin)
                keys.index_copy_(2, cache.slot, k)
                values.index_copy_(2, cache.slot, v)
            k, v = keys, values
        else:
            q, k = apply_rotary(q, batch.cos, batch.sin), apply_rotary(k, batch.cos, batch.sin)
            if cache is not None:
                past = cache.length
                cache.keys[self.layer][:, :, past:past + l] = k
                cache.values[self.layer][:, :, past:past + l] = v
                k, v = cache.keys[self.layer][:, :, :past + l], cache.values[self.layer][:, :, :past + l]
        # Each KV head serves num_heads // num_kv_heads consecutive query heads (HF's repeat_kv).
        rep = self.num_heads // self.num_kv_heads
        if l == 1:  # those heads' queries become rep queries of their KV head: no copy of the cache
            q = q.reshape(b, self.num_kv_heads, rep, self.head_dim)
            if _one_launch(q, batch.backend):
                mask = batch.attn_mask[:, 0, 0] if batch.attn_mask is not None else None
                out = decode_attention(q, k, v, mask)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.attn_mask)
            out = out.reshape(b, self.num_heads, 1, -1)
        else:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.attn_mask,
                                                 is_causal=batch.attn_mask is None)
        return self.o_proj(out.transpose(1, 2).reshape(b, l, -1), batch.backend)


# ---------------------------------------------------------------------------------------------
# MLP, decoder layer, model


class BambaMLP(nn.Module):
    """SwiGLU."""

    def __init__(self, config: BambaConfig):
        super().__init__()
        self.gate_proj = BambaLinear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = BambaLinear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = BambaLinear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x, backend: str = "torch"):
        # gate and up are temporaries of the expression: freed before down_proj allocates its output
        if isinstance(x, NormedRow) or _one_launch(x, backend):
            if _one_row(x) and self.gate_proj.bias is None and self.up_proj.bias is None:
                h = gemv_swiglu(x, self.gate_proj.weight, self.up_proj.weight, static_weight=True)
            else:
                h = silu_mul(self.gate_proj(x, backend), self.up_proj(x, backend))
            return self.down_proj(h, backend)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class BambaDecoderLayer(nn.Module):
    """Pre-norm residual block: a Mamba2 mixer (`mamba`) or attention (`self_attn`), then the MLP."""

    def __init__(self, config: BambaConfig, layer: int):
        super().__init__()
        self.input_layernorm = BambaRMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.is_attention(layer):
            self.self_attn = BambaAttention(config, layer)
        else:
            self.mamba = BambaMixer(config, layer)
        self.pre_ff_layernorm = BambaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.feed_forward = BambaMLP(config)

    def forward(self, hidden, batch: Batch, residual=None):
        """(MLP output, residual stream before it): the caller adds the two, in the next layer's
        first norm or the final one, so each add runs in one launch with a norm. `hidden` is the
        layer's input, or with `residual` the previous layer's MLP output, still to be added."""
        mixer = self.self_attn if hasattr(self, "self_attn") else self.mamba
        if residual is None:
            h, residual = self.input_layernorm(hidden, batch.backend, defer=batch.decode), hidden
        else:
            h, residual = self.input_layernorm(hidden, batch.backend, residual, batch.decode)
        h, residual = self.pre_ff_layernorm(mixer(h, batch), batch.backend, residual, batch.decode)
        return self.feed_forward(h, batch.backend), residual


class BambaModel(nn.Module):
    def __init__(self, config: BambaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(BambaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layernorm = BambaRMSNorm(config.hidden_size, config.rms_norm_eps)


class BambaForCausalLM(nn.Module):
    """Bamba language model. The scan strategy and chunk size belong to the model instance
    (`set_strategy`); nothing is read from module globals.

    >>> model = BambaForCausalLM.from_pretrained("ibm-ai-platform/Bamba-9B", strategy="optimized", num_layers=4)
    >>> logits = model(input_ids)                    # (b, l, vocab)
    """

    def __init__(self, config: BambaConfig):
        super().__init__()
        self.config = config
        self.model = BambaModel(config)
        self.lm_head = BambaLinear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.name_or_path = "random"
        self.path: Path | None = None  # the checkpoint directory (where its tokenizer lives)
        self.strategy = "default"
        self.chunk_size = config.mamba_chunk_size
        self.backend = "triton"

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def set_strategy(self, name: str, chunk_size: int | None = None, *, backend: str | None = None
                     ) -> "BambaForCausalLM":
        """Choose the SSD strategy (one of `bamba.STRATEGIES`), chunk size (default: the
        checkpoint's) and backend ("triton" or "torch", see `bamba.ssd.BACKENDS`; default: keep)."""
        if name not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {name!r}")
        self.chunk_size = check_chunk_size(self.config.mamba_chunk_size if chunk_size is None else chunk_size)
        self.strategy = name
        self.backend = check_backend(self.backend if backend is None else backend)
        return self

    def new_cache(self, batch_size: int, max_length: int) -> BambaCache:
        return BambaCache(self.config, batch_size, max_length, self.dtype, self.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: BambaCache | None = None, *, logits_to_keep: int = 0) -> torch.Tensor:
        """Logits (b, l, vocab), or of the last `logits_to_keep` positions only (0: all).

        `attention_mask` (b, l): 1 for real tokens, 0 for left padding of `input_ids`. With a
        cache, it covers only the new tokens (the cache remembers the old ones), and the cache
        is advanced by l positions.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids: expected shape (batch, length >= 1), got {tuple(input_ids.shape)}")
        b, l = input_ids.shape
        past = cache.length if cache is not None else 0
        if cache is not None and (past + l > cache.max_length or cache.seen.shape[0] != b):
            raise ValueError(f"cache: holds {cache.max_length} positions of batch {cache.seen.shape[0]}; "
                             f"cannot add {l} to {past} for batch {b}")
        if past + l > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {past + l} tokens is longer than the model's limit "
                             f"(max_position_embeddings={self.config.max_position_embeddings})")
        mask, pads = self._padding(attention_mask, b, l, past, input_ids.device)
        if past > 0 and l == 1:
            logits = self.decode_step(input_ids, cache)
            cache.length += 1
            return logits
        seen = cache.seen if cache is not None else torch.zeros(b, dtype=torch.long, device=input_ids.device)
        steps = mask.long().cumsum(1) - 1 if mask is not None else torch.arange(l, device=input_ids.device)[None]
        positions = seen[:, None] + steps.clamp(min=0)
        hidden = self.model.embed_tokens(input_ids)
        cos, sin = rotary_angles(positions, self.config, hidden.dtype)
        padded = mask is not None or (cache is not None and cache.padded)
        batch = Batch(mask, pads, self._attention_mask(mask, cache, l, padded), cos, sin, positions, cache,
                      self.strategy, self.chunk_size, self.backend, self._decay_rates())
        hidden, residual = self._decoder(hidden, batch)
        if cache is not None:
            cache.real[:, past:past + l] = True if mask is None else mask
            cache.seen += l if mask is None else mask.sum(1)
            cache.length += l
            cache.slot += l
            cache.padded = padded
        if logits_to_keep:
            hidden, residual = hidden[:, -logits_to_keep:], residual[:, -logits_to_keep:]
        return self.lm_head(self.model.final_layernorm(hidden, self.backend, residual)[0], self.backend)

    def decode_step(self, input_ids: torch.Tensor, cache: BambaCache) -> torch.Tensor:
        """Logits (b, 1, vocab) of one new token per row (input_ids (b, 1)) after a filled cache.

        Static shapes and no host reads, so a CUDA graph can capture it (`bamba.generation.
        GraphedDecoder`): the token is written at `cache.slot`, attention reads every cached key
        under the `cache.real` mask, positions come from `cache.seen`. Advances the device-side
        counters; `forward`, which calls it for one-token continuations, also advances
        `cache.length`.
        """
        positions = cache.seen[:, None]
        hidden = self.model.embed_tokens(input_ids)
        cos, sin = rotary_angles(positions, self.config, hidden.dtype)
        cache.real.index_fill_(1, cache.slot, True)
        batch = Batch(None, None, cache.real[:, None, None, :], cos, sin, positions, cache,
                      self.strategy, self.chunk_size, self.backend, self._decay_rates(), decode=True)
        hidden, residual = self._decoder(hidden, batch)
        cache.seen += 1
        cache.slot += 1
        return self.lm_head(self.model.final_layernorm(hidden, self.backend, residual, True)[0], self.backend)

    def _decay_rates(self) -> dict[int, torch.Tensor]:
        """A = −exp(A_log) of every Mamba2 layer, fp32, for all layers at once: per layer it took
        three small kernels, a tenth of a decode step's launches."""
        layers = [i for i in range(self.config.num_hidden_layers) if not self.config.is_attention(i)]
        if not layers:
            return {}
        rates = -torch.exp(torch.stack([self.model.layers[i].mamba.A_log for i in layers]).float())
        return dict(zip(layers, rates.unbind()))

    def _decoder(self, hidden: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder layers: (the last layer's MLP output, the residual stream before it), which
        the final norm adds."""
        residual = None
        for layer in self.model.layers:
            hidden, residual = layer(hidden, batch, residual)
        return hidden, residual

    @staticmethod
    def _padding(attention_mask, b, l, past, device):
        """(mask or None when there is no padding, left padding per row); only left padding is allowed."""
        if attention_mask is None:
            return None, None
        if tuple(attention_mask.shape) != (b, l):
            raise ValueError(f"attention_mask: expected shape {(b, l)}, got {tuple(attention_mask.shape)}")
        mask = attention_mask.to(device=device, dtype=torch.bool)
        real = mask.sum(1)
        if bool((real == 0).any()):
            raise ValueError("attention_mask: every row needs at least one real token")
        if bool((mask[:, 1:] < mask[:, :-1]).any()) or (past > 0 and not bool(mask.all())):
            raise ValueError("attention_mask: only left padding is supported (zeros before the first real token "
                             "of a row, none after it, none in a continued cache)")
        if bool(mask.all()):
            return None, None
        return mask, (l - real).tolist()

    @staticmethod
    def _attention_mask(mask, cache, l, padded):
        """Boolean SDPA mask (b|1, 1, l, S), or None when plain causal attention over all keys is right."""
        past = cache.length if cache is not None else 0
        if not padded and past == 0:
            return None
        device = cache.real.device if cache is not None else mask.device
        q = past + torch.arange(l, device=device)
        k = torch.arange(past + l, device=device)
        allowed = (k[None, :] <= q[:, None])[None]
        if padded:
            real = torch.ones(1, l, dtype=torch.bool, device=device) if mask is None else mask
            if cache is not None and past > 0:
                real = torch.cat([cache.real[:, :past], real.expand(cache.real.shape[0], l)], dim=1)
            # A padding query attends to itself only: its output is unused, but must not be NaN.
            allowed = (allowed & real[:, None, :]) | (k[None, :] == q[:, None])[None]
        return allowed[:, None]

    # -----------------------------------------------------------------------------------------
    # Construction and loading

    @classmethod
    def from_config(cls, config: BambaConfig, *, strategy: str = "default", chunk_size: int | None = None,
                    dtype=None, device=None, seed: int = 0, backend: str = "triton") -> "BambaForCausalLM":
        """Random weights, initialised as transformers does, on `device` (fast at 9B dims) from a
        seeded generator: the same seed gives the same weights on the same kind of device."""
        device = _device(device)
        with torch.device("meta"):  # skip nn.Linear's own init: every tensor is set below
            model = cls(config)
        model.to_empty(device=device)
        if config.tie_word_embeddings:  # to_empty allocates tied parameters separately
            model.lm_head.weight = model.model.embed_tokens.weight
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("A_log"):
                    p.copy_(torch.log(torch.arange(1, p.numel() + 1, dtype=torch.float32, device=device)))
                elif name.endswith(("dt_bias", ".D")) or "norm" in name:
                    p.fill_(1.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02, generator=generator)
        model.requires_grad_(False)
        return model.to(dtype=_dtype(dtype, config)).eval().set_strategy(strategy, chunk_size, backend=backend)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, *, strategy: str = "default", chunk_size: int | None = None,
                        num_layers: int | None = None, dtype=None, device=None,
                        backend: str = "triton") -> "BambaForCausalLM":
        """Load a Hugging Face Bamba checkpoint: a directory with config.json and model.safetensors
        (or shards listed in model.safetensors.index.json), or a Hub id when online."""
        if strategy not in STRATEGIES:  # before any slow loading
            raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
        check_backend(backend)
        path = _resolve(path_or_id)
        config = BambaConfig.from_json(path / "config.json")
        if num_layers is not None:
            config = config.truncated(num_layers)
        dtype, device = _dtype(dtype, config), _device(device)
        with torch.device("meta"):  # no memory, no init: every tensor comes from the checkpoint
            model = cls(config)
        expected = dict(model.state_dict())
        if config.tie_word_embeddings:
            expected.pop("lm_head.weight")
        state = _read_safetensors(path, set(expected), dtype, device)
        missing = [k for k in expected if k not in state]
        if missing:
            raise ValueError(f"{path}: checkpoint lacks {len(missing)} of the model's tensors, e.g. {missing[:3]}")
        for name, t in state.items():
            if t.shape != expected[name].shape:
                raise ValueError(f"{path}: tensor {name} has shape {tuple(t.shape)}, the config implies "
                                 f"{tuple(expected[name].shape)}")
        model.load_state_dict(state, strict=False, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.requires_grad_(False)
        model.name_or_path, model.path = str(path_or_id), path
        return model.eval().set_strategy(strategy, chunk_size, backend=backend)


def parse_dtype(name: str) -> torch.dtype:
    """A dtype named as options and configs name it (bfloat16, bf16, ...)."""
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _dtype(dtype, config: BambaConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return parse_dtype(dtype or (config.dtype if config.dtype in DTYPES else "float32"))


def _device(device) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def _resolve(path_or_id) -> Path:
    """A local checkpoint directory, downloading from the Hugging Face Hub if given an id."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path}: expected a checkpoint directory, got a file")
    if str(path_or_id).count("/") != 1 or str(path_or_id).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{path_or_id}: no such checkpoint directory")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(str(path_or_id), allow_patterns=["*.json", "*.safetensors", "tokenizer*"])
    except Exception as err:  # offline, unknown repo, gated...: all mean "cannot get it"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""  # one line for the CLI
        raise FileNotFoundError(f"{path_or_id}: not a local directory, and the Hub download failed: "
                                f"{type(err).__name__}: {first}") from None
    return Path(local)


def _read_safetensors(path: Path, wanted: set[str], dtype: torch.dtype, device: torch.device) -> dict:
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index}: not a valid safetensors index ({type(err).__name__}: {err})") from None
        files = sorted({weight_map[k] for k in wanted if k in weight_map})
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")
    state = {}
    for name in files:
        file = path / name
        if not file.is_file():
            raise FileNotFoundError(f"{file}: shard listed in the index is missing")
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if key in wanted:
                        # Mixer scalars (A_log, D, dt_bias) too: transformers loads every tensor in one dtype.
                        state[key] = f.get_tensor(key).to(device=device, dtype=dtype)
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{file}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    return state
