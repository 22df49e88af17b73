"""Host-side helpers of the kernels: the same values as Triton's constexpr functions they replace."""
import triton

from bamba.kernels.utils import cdiv, next_power_of_2


def test_cdiv_and_next_power_of_2_match_triton():
    for a in range(0, 300):
        assert next_power_of_2(max(a, 1)) == triton.next_power_of_2(max(a, 1))
        for b in (1, 2, 3, 16, 64, 256):
            assert cdiv(a, b) == triton.cdiv(a, b)
    assert next_power_of_2(1 << 20) == 1 << 20 and next_power_of_2((1 << 20) + 1) == 1 << 21
