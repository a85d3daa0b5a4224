"""Quantization kernels == sim.numerics.quantize (codes and scales, atol = rtol = 0)."""
import numpy as np
import pytest
import torch

from gpu.common import quantize_operand
from sim.numerics import quantize
from sim.spec import OperandQuant
from tests.gpu.helpers import make_qkv, np32

CASES = [  # (label, granularity, block_tokens, tile, rounding, scale_dtype, L, dtype)
    ("token-L1", "per_token", None, 128, "half_even", "fp16", 1, torch.float16),
    ("token-L97-away", "per_token", None, 128, "half_away", "fp16", 97, torch.float16),
    ("token-bf16-fp32scale", "per_token", None, 128, "half_even", "fp32", 17, torch.bfloat16),
    ("block-tile64-L97", "per_block", None, 64, "half_even", "fp32", 97, torch.float16),
    ("block-17tok-floor", "per_block", 17, 64, "floor", "fp16", 97, torch.float16),
    ("block-tile128-L17-up", "per_block", None, 128, "half_up", "fp32", 17, torch.float16),
    ("head-L97-trunc", "per_head", None, 64, "toward_zero", "fp16", 97, torch.float16),
    ("head-bf16", "per_head", None, 64, "half_even", "fp32", 33, torch.bfloat16),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("arithmetic", ["fp32", "fp16"])
def test_quantize_matches_sim(case, D, transpose, arithmetic):
    _, gran, bt, tile, rnd, sdt, L, dtype = case
    oq = OperandQuant(bits=8, granularity=gran, rounding=rnd, scale_dtype=sdt, block_tokens=bt,
                      arithmetic=arithmetic)
    x, _, _ = make_qkv(2, 3, 3, L, 1, D, dtype=dtype, seed=L + D)
    x = x.clone()
    x[0, 0, 0, :] = 0  # an all-zero token (per_token: zero-scale policy "one")
    if L > 4:
        x[1, 2, 3, 5] = 300.0 if dtype == torch.float16 else 3.0e4  # an outlier
    got = quantize_operand(x, oq, tile, transpose=transpose)
    ref = quantize(np32(x), 8, block=oq.block(tile), rounding=rnd, scale_dtype=sdt,
                   arithmetic=arithmetic)
    codes = got.codes_bhld().cpu().numpy()
    np.testing.assert_array_equal(codes, ref.codes)
    np.testing.assert_array_equal(got.scale.cpu().numpy(), ref.scale.reshape(got.scale.shape))
    assert got.group == (0 if gran == "per_head" else (1 if gran == "per_token" else bt or tile))


def test_quantize_exhaustive_fp16_codes():
    """Every finite fp16 value, per_token rows of 128 with the largest value fixed: each rounding."""
    allv = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    allv = allv[np.isfinite(allv)]
    allv = np.concatenate([allv, np.zeros((-len(allv)) % 127, np.float16)]).reshape(-1, 127)
    rows = np.concatenate([allv, np.full((allv.shape[0], 1), 65504, np.float16)], axis=1)
    rows = rows[:, :128] / np.float16(1.0)
    # scale rows so the codes spread: divide each row's max down to 127 * 2^k steps
    x = torch.from_numpy(rows.astype(np.float16)).reshape(1, 1, -1, 128).contiguous()
    for rnd in ("half_even", "half_up", "half_away", "floor", "toward_zero"):
        oq = OperandQuant(bits=8, granularity="per_token", rounding=rnd, scale_dtype="fp16")
        got = quantize_operand(x.to(make_qkv(1, 1, 1, 1, 1, 64)[0].device), oq, 128)
        ref = quantize(x.numpy(), 8, block=oq.block(128), rounding=rnd, scale_dtype="fp16")
        np.testing.assert_array_equal(got.codes.cpu().numpy(), ref.codes)


def test_fp16_arithmetic_is_the_authors_torch_quantizer():
    """arithmetic fp16 reproduces INT-FlashAttention's host quantizer on fp16 tensors,
    ``round(x / (absmax(x) / 127))`` evaluated by torch in fp16 (half-even), code for code."""
    x, _, _ = make_qkv(2, 4, 4, 257, 1, 128, dtype=torch.float16, seed=11)
    oq = OperandQuant(bits=8, granularity="per_token", rounding="half_even", scale_dtype="fp16",
                      arithmetic="fp16")
    got = quantize_operand(x, oq, 128)
    xc = x.cpu()
    scale = xc.abs().amax(dim=-1, keepdim=True) / 127          # fp16 tensors, as the authors
    want = torch.round(xc / scale).clamp(-127, 127).to(torch.int8)
    np.testing.assert_array_equal(got.codes.cpu().numpy(), want.numpy())
    np.testing.assert_array_equal(got.scale.cpu().numpy(), scale.float().numpy()[..., 0])
    fp32 = quantize_operand(x, OperandQuant(bits=8, granularity="per_token", rounding="half_even",
                                            scale_dtype="fp16"), 128)
    share = float((fp32.codes != got.codes).float().mean())
    print(f"codes differing between fp32 and fp16 division: {share:.4%}")
    assert 0 < share < 0.05            # the issue measured 1.2-1.3% on its inputs
