"""The PyTorch reference scan against a token-by-token float64 recurrence."""
import pytest
import torch

import bamba
from bamba.kernels.ssd_reference import ssd_reference


@pytest.mark.parametrize("b,l,h,p,g,n,Q", [
    (1, 1, 2, 4, 1, 3, 16), (2, 7, 4, 3, 2, 5, 16), (2, 40, 4, 4, 1, 6, 16), (3, 64, 6, 2, 3, 4, 32),
])
@pytest.mark.parametrize("extras", [False, True])
def test_reference_matches_recurrence(kit, b, l, h, p, g, n, Q, extras):
    inp = kit.to64(kit.make(b, l, h, p, g, n, with_d=extras, with_bias=extras, with_init=extras))
    y, s = bamba.ssd(**inp, chunk_size=Q, strategy="reference")
    yn, sn = kit.naive(**inp)
    assert y.dtype == torch.float64 and s.dtype == torch.float64
    torch.testing.assert_close(y, yn, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, sn, rtol=1e-10, atol=1e-10)


def test_reference_dt_limit_and_no_softplus(kit):
    inp = kit.to64(kit.make(2, 21, 4, 3, 2, 4))
    inp["dt"] = inp["dt"].abs()
    for kw in (dict(dt_limit=(0.05, 0.4)), dict(dt_softplus=False)):
        y, s = bamba.ssd(**inp, chunk_size=16, strategy="reference", **kw)
        yn, sn = kit.naive(**inp, **kw)
        torch.testing.assert_close(y, yn, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s, sn, rtol=1e-10, atol=1e-10)


def test_reference_fp32_state_dtype(kit):
    inp = kit.make(1, 5, 2, 4, 1, 4)
    y, s = ssd_reference(**{k: inp[k] for k in ("x", "dt", "A", "B", "C")}, chunk_size=16)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
