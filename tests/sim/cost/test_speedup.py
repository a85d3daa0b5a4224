"""sim.cost.speedup and the phase a shape is priced as (inferred from q_len, or checked)."""
import pytest

from sim.cost import Shape, infer_phase, predict, speedup

DECODE = Shape(8, 32, 8, 1, 8192, 128)
PREFILL = Shape(4, 32, 32, 4096, 4096, 64)


def test_one_query_row_is_priced_as_decode_unless_asked_otherwise():
    assert infer_phase(DECODE) == "decode" and infer_phase(PREFILL) == "prefill"
    implicit = predict("fp16_flash", DECODE, "h100_sxm")
    explicit = predict("fp16_flash", DECODE, "h100_sxm", phase="decode")
    assert implicit.phase == "decode" and implicit.time == explicit.time
    # a one-token prefill stays available when asked for, and prices differently
    assert predict("fp16_flash", DECODE, "h100_sxm", phase="prefill").phase == "prefill"


@pytest.mark.parametrize("phase, match", [("decode", "q_len"), ("both", "phase")])
def test_bad_phase_is_refused(phase, match):
    with pytest.raises(ValueError, match=match):
        predict("fp16_flash", PREFILL, "h100_sxm", phase=phase)


def test_speedup_is_the_ratio_of_two_predictions():
    s = speedup("int8_flash", PREFILL, "a100_80gb_sxm")
    b = predict("fp16_flash", PREFILL, "a100_80gb_sxm")
    m = predict("int8_flash", PREFILL, "a100_80gb_sxm")
    assert s.value == pytest.approx(b.time / m.time, rel=1e-12) and float(s) == s.value
    assert s.phase == "prefill" and s.to_row()["speedup"] == s.value


def test_speedup_compares_like_with_like_in_decode():
    ideal = speedup("turbo", DECODE, "h100_sxm", kernel="ideal")
    ours = speedup("turbo", DECODE, "h100_sxm")
    assert ideal.baseline.kernel == "ideal" and ours.baseline.kernel == "flash_decode"
    forced = speedup("turbo", DECODE, "h100_sxm", kernel="ideal", baseline_kernel="flash_decode")
    assert forced.baseline.kernel == "flash_decode"
    assert forced.value != ideal.value
