"""qsattn bench's GPU-free parts: the report section and sweep plots from bench JSON."""
import json
from types import SimpleNamespace

from qsattn import bench, bench_plots


def _prefill():
    rows = [{"name": n, "L": L, "causal": c, "ms": ms * L / 1024, "tune": False}
            for c in (False, True) for L in (1024, 8192)
            for n, ms in (("sdpa_cudnn", 1.0), ("sageattn_1.0.6", 1.5), ("int8_flash", 2.0))]
    rows.append({"name": "tune int8_flash", "L": 8192, "causal": False, "ms": 9.0, "tune": True})
    return {"config": {"prefill": {"batch": 4, "heads": 32, "kv_heads": 32, "head_dim": 128,
                                   "target_length": 8192}},
            "rows": rows, "provenance": {"gpu": "H100", "git": "abc", "time_utc": "t", "command": "c"}}


def _decode():
    rows = [{"name": n, "L": L, "ms": ms, "kind": k, "hbm_share": 0.5}
            for L in (2048, 32768)
            for n, ms, k in (("sdpa_cudnn", 1.0, "peer"), ("turbo int4", 2.0, "ours"),
                             ("stage: x", 0.1, "stage"))]
    return {"config": {"batch": 8, "heads": 32, "kv_heads": 32, "head_dim": 128, "context": 32768},
            "rows": rows, "provenance": {"gpu": "H100", "git": "abc", "time_utc": "t"}}


def test_report_section_without_results_says_how_to_make_them(tmp_path):
    text = bench.report_section(SimpleNamespace(out=tmp_path))
    assert "No benchmark results yet" in text and "qsattn bench" in text


def test_report_section_ratios_from_committed_json(tmp_path):
    d = tmp_path / "bench" / "h100_sxm"
    d.mkdir(parents=True)
    (d / "prefill.json").write_text(json.dumps(_prefill()))
    (d / "decode.json").write_text(json.dumps(_decode()))
    text = bench.report_section(SimpleNamespace(out=tmp_path))
    # int8_flash at L=8192: 16 ms vs cuDNN 8 ms and Sage 12 ms; tune rows are left out
    assert "| int8_flash | False | 16.000 | 0.50 | 0.75 |" in text
    assert "tune" not in text
    assert "| turbo int4 | ours | 2.000 | 0.50 | 50% |" in text


def test_sweep_plots_are_written(tmp_path):
    made = bench_plots.plot_prefill(_prefill(), tmp_path / "prefill_sweep.png")
    made += bench_plots.plot_decode(_decode(), tmp_path / "decode_sweep.png")
    assert [p.name for p in made] == ["prefill_sweep_noncausal.png", "prefill_sweep_causal.png",
                                      "decode_sweep.png"]
    assert all(p.stat().st_size > 10_000 for p in made)


def test_run_saves_json_markdown_and_plots_with_provenance(tmp_path, monkeypatch):
    """run() on a (faked) GPU writes <phase>.json/.md/_sweep PNGs for each phase, with provenance."""
    import argparse

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")
    # the committed results of a real run have exactly the schema the bench functions return
    from qsattn.provenance import ROOT

    real = {n: json.loads((ROOT / "reports" / "bench" / "h100_sxm" / f"{n}.json").read_text())
            for n in ("prefill", "decode")}
    monkeypatch.setattr(bench, "_run_bench", lambda cfg, args, log: real["prefill"])
    monkeypatch.setattr(bench, "_run_decode_bench", lambda cfg, args, log: real["decode"])
    args = argparse.Namespace(config=bench.DEFAULT_CONFIG, out=tmp_path, skip="host",
                              format="csv", no_progress=True)
    assert bench.run(args) == 0
    for name in ("prefill.json", "prefill.md", "prefill.csv", "prefill_sweep_noncausal.png",
                 "prefill_sweep_noncausal.csv", "prefill_sweep_causal.png", "decode.json",
                 "decode.md", "decode.csv", "decode_sweep.png", "decode_sweep.csv"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "decode.json").read_text())["provenance"]["gpu"] == "FakeGPU"


def test_report_section_summarizes_the_newest_device_runs(tmp_path):
    """The kernel issues' device runs: the newest run of each, ratios from that run's own peers
    (the fastest structure per method, quantization included)."""
    d = tmp_path / "bench"
    (d / "h100_sxm").mkdir(parents=True)
    (d / "h100_sxm" / "prefill.json").write_text(json.dumps(_prefill()))
    dims = [4, 32, 32, 8192, 8192, 128]
    t = [{"kind": "sdpa", "method": "cudnn", "structure": "-", "shape": "main", "dims": dims,
          "causal": c, "ms": 8.0} for c in (False, True)]
    t += [{"kind": "quant", "method": "int8", "structure": "-", "shape": "main", "dims": dims,
           "causal": False, "ms": 1.0}]
    t += [{"kind": "forward", "method": m, "structure": st, "shape": "main", "dims": dims,
           "causal": False, "ms": ms} for m, st, ms in (("int8", "m1", 9.0), ("int8", "m2", 7.0),
                                                         ("fp16", "v2", 4.0))]
    for run, scale in (("run1", 100.0), ("run2", 1.0)):
        (d / "gluon_dev" / run).mkdir(parents=True)
        rows = [dict(r, ms=r["ms"] * (scale if r["kind"] == "forward" else 1.0)) for r in t]
        (d / "gluon_dev" / run / "gluon_prefill.json").write_text(json.dumps(
            {"env": {"device": "H200", "git_revision": "f" * 40}, "timings": rows}))
    (d / "decode_dev" / "run1").mkdir(parents=True)
    (d / "decode_dev" / "run1" / "decode_dev.json").write_text(json.dumps(
        {"provenance": {"gpu": "H200", "git": "abc"},
         "rows": [{"name": n, "config": c, "L": 32768, "ms": 1.0, "x_best_sdpa": x}
                  for n, c, x in (("sdpa cudnn", "mha", 1.0), ("turbo int4", "mha", 0.81),
                                  ("turbo int4", "gqa4", 0.68))]}))
    text = bench.report_section(SimpleNamespace(out=tmp_path))
    assert "| int8 | False | m2 | 8.000 | 1.00 |" in text      # 7 + 1 ms quantization
    assert "| fp16 | False | v2 | 4.000 | 2.00 |" in text      # fp16 quantizes nothing
    assert "gluon_dev/run2/gluon_prefill.md" in text and "run1/gluon" not in text
    assert "| turbo int4 | 0.81 |" in text                    # MHA rows only
