"""Pure-PyTorch chunked SSD scan and one-token step: the ground truth and the CPU path.

Works in float32 (float64 when the inputs are float64). Memory is bounded by one chunk at a
time: the largest temporary is the (b, h, Q, Q) decay-weighted C·Bᵀ block of the current chunk.
"""
from __future__ import annotations

import torch

from .utils import process_dt


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _heads(t, h):
    """(..., g, n) -> (..., h, n) by repeating each group for its h // g heads."""
    g = t.shape[-2]
    return t if g == h else t.repeat_interleave(h // g, dim=-2)


def ssd_reference(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=True,
                  dt_limit=(0.0, float("inf")), initial_state=None, chunk_local=False):
    """The exact scan, one chunk at a time; `chunk_local` starts every chunk after the first from
    zero state (the `independent` strategy's definition)."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    cd = _compute_dtype(x)
    A = A.to(cd)
    dt = process_dt(dt.to(cd), None if dt_bias is None else dt_bias.to(cd), dt_softplus, dt_limit)
    state = (torch.zeros(b, h, p, n, dtype=cd, device=x.device) if initial_state is None
             else initial_state.to(cd).clone())
    y = torch.empty(b, l, h, p, dtype=cd, device=x.device)
    for s in range(0, l, chunk_size):
        e = min(s + chunk_size, l)
        q = e - s
        if chunk_local and s > 0:
            state = torch.zeros_like(state)
        xc = x[:, s:e].to(cd)                       # (b, q, h, p)
        dtc = dt[:, s:e]                            # (b, q, h)
        Bc = _heads(B[:, s:e].to(cd), h)            # (b, q, h, n)
        Cc = _heads(C[:, s:e].to(cd), h)
        cs = torch.cumsum(dtc * A, dim=1)           # (b, q, h)
        cs_h = cs.transpose(1, 2)                   # (b, h, q)
        seg = (cs_h[:, :, :, None] - cs_h[:, :, None, :]).clamp(max=0.0)
        causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
        decay = torch.where(causal, torch.exp(seg), torch.zeros((), dtype=cd, device=x.device))
        cb = torch.einsum("bihn,bjhn->bhij", Cc, Bc) * decay
        y_diag = torch.einsum("bhij,bjh,bjhp->bihp", cb, dtc, xc)
        y_off = torch.einsum("bihn,bhpn->bihp", Cc, state) * torch.exp(cs.clamp(max=0.0))[..., None]
        y[:, s:e] = y_diag + y_off
        last = cs[:, -1]                            # (b, h)
        w = torch.exp((last[:, None] - cs).clamp(max=0.0)) * dtc
        state = torch.exp(last.clamp(max=0.0))[:, :, None, None] * state + torch.einsum(
            "bjh,bjhp,bjhn->bhpn", w, xc, Bc)
    if D is not None:
        y = y + x.to(cd) * D.to(cd)[:, None]
    return y.to(x.dtype), state


def ssd_step_reference(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True,
                       dt_limit=(0.0, float("inf")), reset=None):
    """One token. state (b,h,p,n) is updated in place; reset (bool, or (b,) bool) zeroes it first."""
    h = x.shape[1]
    cd = state.dtype if state.dtype == torch.float64 else torch.float32
    dt = process_dt(dt.to(cd), None if dt_bias is None else dt_bias.to(cd), dt_softplus, dt_limit)
    Bh = _heads(B.to(cd), h)                        # (b, h, n)
    Ch = _heads(C.to(cd), h)
    xc = x.to(cd)
    s = state.to(cd)
    if isinstance(reset, bool):
        s = torch.zeros_like(s) if reset else s
    elif reset is not None:
        s = torch.where(reset.view(-1, 1, 1, 1), torch.zeros((), dtype=cd, device=s.device), s)
    decay = torch.exp((dt * A.to(cd)).clamp(max=0.0))
    s = decay[:, :, None, None] * s + (dt[:, :, None] * xc)[..., None] * Bh[:, :, None, :]
    state.copy_(s)
    y = torch.einsum("bhpn,bhn->bhp", s, Ch)
    if D is not None:
        y = y + xc * D.to(cd)[:, None]
    return y.to(x.dtype)


def ssd_chunk_local_reference(*args, **kwargs):
    return ssd_reference(*args, **kwargs, chunk_local=True)
