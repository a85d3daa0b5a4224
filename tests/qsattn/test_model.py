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
    assert "fp16_flash" in ids and "turbo_int2_exp2" in ids and "ds_1_32_dense2" in ids
    assert {"fp8_flash", "int8_flash", "ds_1_4", "ds_1_4_dense2"} <= set(ids)
    assert len(qm.build_variants(quick)) < len(ids)
    assert quick["evaluation"]["window"] < full["evaluation"]["window"]
    # the shipped slices do not overlap
    c, e = full["calibration"], full["evaluation"]
    assert c["offset"] + c["window"] * c["windows"] <= e["offset"]


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config"):
        qm.load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="evaluation.window"):
        qm.load_config(_cfg(tmp_path, evaluation={"offset": 0, "window": 0, "windows": 1}))
    cfg = qm.load_config()
    cfg["variants"] = cfg["variants"] + [{"id": "fp16_flash", "method": "fp16_flash"}]
    with pytest.raises(ValueError, match="duplicate"):
        qm.build_variants(cfg)
    cfg = qm.load_config()
    cfg["baseline"] = "nope"
    with pytest.raises(ValueError, match="baseline"):
        qm.build_variants(cfg)
    cfg = qm.load_config()
    cfg["variants"] = [{"id": "x", "method": "int8_flash", "set": {"p.rounding": "sideways"}},
                       {"id": "fp16_flash", "method": "fp16_flash"}]
    with pytest.raises(ValueError, match="variant 'x'"):
        qm.build_variants(cfg)


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
    cfg["calibration"] = dict(cfg["evaluation"])
    with pytest.raises(ValueError, match="overlaps"):
        qm.Study(cfg, tmp_path / "out", progress=False)


@pytest.mark.slow
def test_kv_bytes_and_needle_prompt(smol, tmp_path):
    cfg = qm.load_config(quick=True)
    st = qm.Study(cfg, tmp_path / "out", progress=False)
    fp16 = st.kv_bytes(st.by_id["fp16_flash"], 1024)
    assert fp16 == 2 * 2 * 1024 * 3 * 64 * 30
    int8 = st.kv_bytes(st.by_id["int8_flash"], 1024)
    assert fp16 / 2 < int8 < fp16 / 1.9  # int8 codes + fp16 per-token K scales
    seq, n_ans, key = st._needle_prompt(512, 0)
    assert len(seq) == 512 and n_ans == 5 and len(key) == 5
    assert st.tok.decode(seq[-n_ans:].tolist()).strip() == key


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
