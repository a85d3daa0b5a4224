"""qsattn.costcheck --validation: re-predicting stored validation rows without touching them."""
import json

from qsattn import costcheck as check


def _row(method, phase, q_len, kv_len, hkv, measured, pred):
    """A stored validation row (qsattn.validation_summary.ROW_SCHEMA, as the GPU run writes)."""
    return {"id": f"{method}-{phase}-{kv_len}", "dtype": "float16", "hardware": "h100_sxm",
            "method": method, "phase": phase, "label": f"{phase} {method}",
            "shape": {"batch": 8, "q_heads": 32, "kv_heads": hkv, "q_len": q_len,
                      "kv_len": kv_len, "head_dim": 128, "causal": False},
            "measured_us": measured, "pred_us": pred}


def test_repredict_validation_reads_only(tmp_path):
    p = tmp_path / "results.jsonl"
    rows = [_row("fp16_flash", "decode", 1, 32768, 8, 1330.7, {"calibrated": 364.5}),
            _row("turbo", "decode", 1, 4096, 32, 601.7, {"calibrated": 62.0}),
            _row("fp16_flash", "decode", 1, 4096, 8, None, {})]          # not measured: skipped
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    p.write_text(text)
    got = check.repredict_validation(p)
    assert p.read_text() == text
    assert [g["method"] for g in got] == ["fp16_flash", "turbo"]
    g = got[0]
    assert g["measured_us"] == 1330.7 and g["stored"] == {"calibrated": 364.5}
    assert set(g["now"]) == {"roofline", "tiled", "calibrated"}
    # our grouped fp16 kernel streams K/V once per KV head: above the roofline, below the old
    # per-query-head kernel's price at this point (606.5 us)
    assert g["now"]["roofline"] < g["now"]["calibrated"] < 500.0
    md = check.validation_medians(got)
    print(md)
    assert "| fp16_flash | decode | 1 |" in md and "-73% -> " in md
    assert "turbo" in check.validation_table(got)
