"""Record what transformers returns for the usages of issue 14 (the transformers drop-in surface), so
tests/test_hf_compat.py can check llamacpu returns the same without importing torch.

Run from the repository root with a venv that has torch, transformers, sentencepiece and protobuf
(the last two for converting a lone tokenizer.model; never llamacpu's .venv):

    /work/benchenv/bin/python tools/make_hf_compat_reference.py [--shared ../shared/models]

Writes tests/fixtures/hf_compat/reference.json (small values, texts, key lists) and arrays.npz (hidden
states, attentions, beam-search and greedy scores). Inputs: the committed tiny checkpoints in
tests/fixtures/parity and, when the shared folder exists, stories260K and the Llama 2 tokenizer
(entries under "stories" / "tokenizers"; the tests that read them skip without ../shared).
Recorded with transformers 5.24.0, torch 2.13.0+cpu.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,  # noqa: E402
                          LlamaForSequenceClassification, LlamaModel, LlamaTokenizerFast, pipeline)

REPO = Path(__file__).resolve().parent.parent
PARITY = REPO / "tests" / "fixtures" / "parity"
OUT = REPO / "tests" / "fixtures" / "hf_compat"
LLAMA2_CHAT_TEMPLATE = None  # filled from llamacpu's source text (the template is data, not code)

arrays: dict[str, np.ndarray] = {}


def load(path, **kw):
    m = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager", **kw)
    m.eval()
    return m


def ref(case):
    return dict(np.load(PARITY / case / "reference.npz"))


def positions(mask):
    return (torch.from_numpy(mask).cumsum(-1) - 1).clamp(min=0)


# ---- model outputs ------------------------------------------------------------------------------

def record_outputs(out):
    res = {}
    for case in ("mha_f32", "padded_batch"):
        r = ref(case)
        m = load(PARITY / case)
        ids, mask = torch.from_numpy(r["input_ids"]), torch.from_numpy(r["attention_mask"])
        with torch.no_grad():
            o = m(ids, attention_mask=mask, position_ids=positions(r["attention_mask"]), labels=ids,
                  output_hidden_states=True, output_attentions=True)
        res[case] = {"type": type(o).__name__, "keys": list(o.keys()), "tuple_len": len(o.to_tuple()),
                     "n_hidden_states": len(o.hidden_states), "n_attentions": len(o.attentions),
                     "loss": float(o.loss)}
        for i, h in enumerate(o.hidden_states):
            arrays[f"{case}.hidden_states.{i}"] = h.numpy()
        for i, a in enumerate(o.attentions):
            arrays[f"{case}.attentions.{i}"] = a.numpy()
        with torch.no_grad():
            plain = m(ids, attention_mask=mask, position_ids=positions(r["attention_mask"]))
        res[case]["plain_keys"] = list(plain.keys())
        base = LlamaModel.from_pretrained(str(PARITY / case), dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            b = base(ids, attention_mask=mask, position_ids=positions(r["attention_mask"]), output_hidden_states=True)
        res[case]["base_type"] = type(b).__name__
        res[case]["base_keys"] = list(b.keys())
    out["outputs"] = res


def record_seq_cls(out):
    """A causal checkpoint loaded as LlamaForSequenceClassification: score is newly initialised."""
    r = ref("mha_f32")
    with warnings.catch_warnings(record=True):
        m, info = LlamaForSequenceClassification.from_pretrained(
            str(PARITY / "mha_f32"), dtype=torch.float32, output_loading_info=True)
    with torch.no_grad():
        o = m(torch.from_numpy(r["input_ids"]))
    out["seq_cls"] = {"missing_keys": sorted(info["missing_keys"]), "type": type(o).__name__,
                      "keys": list(o.keys()), "logits_shape": list(o.logits.shape),
                      "score_shape": list(m.score.weight.shape),
                      "score_std": float(m.score.weight.std())}


# ---- generate -----------------------------------------------------------------------------------

def gen(m, ids, mask, **kw):
    with torch.no_grad():
        return m.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **kw)


BEAM_SETTINGS = [
    # (name, kwargs); eos: "none" or the token greedy decoding emits third (so beams finish early)
    ("b3", dict(num_beams=3, num_return_sequences=1, max_new_tokens=8), "none"),
    ("b4r2_eos", dict(num_beams=4, num_return_sequences=2, max_new_tokens=8), "third"),
    ("b3r3_lp2_eos", dict(num_beams=3, num_return_sequences=3, max_new_tokens=8, length_penalty=2.0), "third"),
    ("b4r2_lp05_eos_early", dict(num_beams=4, num_return_sequences=2, max_new_tokens=8, length_penalty=0.5,
                                 early_stopping=True), "third"),
]


def record_beams(out):
    res = {}
    for case in ("mha_f32", "gqa_f16", "mqa_bf16", "padded_batch"):
        r = ref(case)
        m = load(PARITY / case)
        T = r["input_ids"].shape[1]
        for name, kw, eos_rule in BEAM_SETTINGS:
            eos = None if eos_rule == "none" else int(r["greedy_ids"][0, T + 2])
            pad = 0
            o = gen(m, r["input_ids"], r["attention_mask"], do_sample=False, eos_token_id=eos, pad_token_id=pad,
                    return_dict_in_generate=True, output_scores=True, **kw)
            key = f"{case}.{name}"
            res[key] = {"kwargs": kw, "eos_token_id": eos, "pad_token_id": pad, "type": type(o).__name__,
                        "keys": list(o.keys())}
            arrays[f"beam.{key}.sequences"] = o.sequences.numpy()
            arrays[f"beam.{key}.sequences_scores"] = o.sequences_scores.numpy()
            arrays[f"beam.{key}.scores"] = torch.stack(o.scores).numpy()
            arrays[f"beam.{key}.beam_indices"] = o.beam_indices.numpy()
            plain = gen(m, r["input_ids"], r["attention_mask"], do_sample=False, eos_token_id=eos,
                        pad_token_id=pad, **kw)
            assert (plain.numpy() == o.sequences.numpy()).all()
    out["beams"] = res


def record_greedy_dict(out):
    res = {}
    for case in ("gqa_f16", "padded_batch"):
        r = ref(case)
        m = load(PARITY / case)
        T = r["input_ids"].shape[1]
        o = gen(m, r["input_ids"], r["attention_mask"], do_sample=False, max_new_tokens=6, eos_token_id=None,
                pad_token_id=0, return_dict_in_generate=True, output_scores=True, output_logits=True)
        res[case] = {"type": type(o).__name__, "keys": list(o.keys()), "n_scores": len(o.scores)}
        arrays[f"greedy.{case}.sequences"] = o.sequences.numpy()
        arrays[f"greedy.{case}.scores"] = torch.stack(o.scores).numpy()
        arrays[f"greedy.{case}.logits"] = torch.stack(o.logits).numpy()
        ml = gen(m, r["input_ids"], r["attention_mask"], do_sample=False, max_length=T + 4, eos_token_id=None,
                 pad_token_id=0)
        arrays[f"max_length.{case}.sequences"] = ml.numpy()
        # repetition penalty changes the scores output_scores returns (processed, not raw)
        o = gen(m, r["input_ids"], r["attention_mask"], do_sample=False, max_new_tokens=4, eos_token_id=None,
                pad_token_id=0, repetition_penalty=1.3, return_dict_in_generate=True, output_scores=True)
        arrays[f"greedy_rp.{case}.sequences"] = o.sequences.numpy()
        arrays[f"greedy_rp.{case}.scores"] = torch.stack(o.scores).numpy()
    out["greedy_dict"] = res


def record_generation_config_file(out):
    """generation_config.json is read by from_pretrained and used by generate."""
    r = ref("mha_f32")
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(PARITY / "mha_f32", d, dirs_exist_ok=True)
        gc = {"max_new_tokens": 5, "do_sample": False, "eos_token_id": None, "bos_token_id": 1}
        Path(d, "generation_config.json").write_text(json.dumps(gc))
        m = load(d)
        o = gen(m, r["input_ids"], r["attention_mask"])
        out["generation_config_file"] = {"file": gc, "new_tokens": int(o.shape[1] - r["input_ids"].shape[1]),
                                         "model_generation_config": {k: getattr(m.generation_config, k)
                                                                     for k in ("max_new_tokens", "do_sample")}}
        arrays["generation_config_file.sequences"] = o.numpy()


# ---- configuration ------------------------------------------------------------------------------

def record_config(out):
    kw = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, initializer_range=0.01, use_cache=False, attention_dropout=0.0,
              rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0}, pad_token_id=0)
    c = LlamaConfig(**kw)
    default = LlamaConfig()
    with tempfile.TemporaryDirectory() as d:
        c.save_pretrained(d)
        saved = json.loads(Path(d, "config.json").read_text())
        files = sorted(os.listdir(d))
    out["config"] = {"kwargs": kw, "to_dict": c.to_dict(), "default_to_dict": default.to_dict(),
                     "to_json_string": c.to_json_string(), "saved": saved, "saved_files": files}
    # a model built from a config: random init (normal, std initializer_range), padding row zero
    torch.manual_seed(0)
    m = LlamaModel(LlamaConfig(pad_token_id=0, **{k: v for k, v in kw.items() if k != "pad_token_id"}))
    emb = m.embed_tokens.weight.detach()
    out["from_config"] = {"embed_row0_absmax": float(emb[0].abs().max()), "embed_std": float(emb[1:].std()),
                          "q_std": float(m.layers[0].self_attn.q_proj.weight.std()),
                          "norm_values": sorted(set(m.norm.weight.tolist())),
                          "padding_idx": m.embed_tokens.padding_idx,
                          "param_names": sorted(n for n, _ in m.named_parameters())}


# ---- stories260K and tokenizers (need the shared models folder) ------------------------------------

TEXTS = ["Once upon a time", "Hello world", " leading space", "Tim said, \"Hi!\"\nThe end.", "ünïcødé 😀 x",
         "two  spaces", "<s> inside", ""]


def record_tokenizers(out, shared: Path):
    res = {}
    for name in ("stories260K", "llama2-tokenizer"):
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(shared / name / "tokenizer.model", d)
            tok = LlamaTokenizerFast.from_pretrained(d)
            entry = {"class": type(tok).__name__, "padding_side": tok.padding_side,
                     "encode": [tok.encode(t) for t in TEXTS], "tokenize": [tok.tokenize(t) for t in TEXTS],
                     "decode": [tok.decode(tok.encode(t)) for t in TEXTS],
                     "decode_skip": [tok.decode(tok.encode(t), skip_special_tokens=True) for t in TEXTS],
                     "len": len(tok), "vocab_size": tok.vocab_size,
                     "bos": tok.bos_token, "eos": tok.eos_token, "unk": tok.unk_token, "pad": tok.pad_token}
            # transformers 5 dropped build_inputs_with_special_tokens & co. from LlamaTokenizer(Fast);
            # llamacpu keeps them with 4.x semantics, so nothing is recorded for them here
            entry["has_build_inputs"] = hasattr(tok, "build_inputs_with_special_tokens")
            with tempfile.TemporaryDirectory() as s:
                entry["save_vocabulary"] = [os.path.basename(p) for p in tok.save_vocabulary(s)]
        res[name] = entry
    out["tokenizers"] = res


def record_stories(out, shared: Path):
    global LLAMA2_CHAT_TEMPLATE
    path = str(shared / "stories260K")
    res = {}
    tok = AutoTokenizer.from_pretrained(path)
    res["tokenizer_class"] = type(tok).__name__
    res["padding_side"] = tok.padding_side
    tok.pad_token = tok.eos_token
    enc = tok(["Once upon a time", "Hi"], padding=True, return_tensors="np")
    res["padded"] = {"input_ids": enc["input_ids"].tolist(), "attention_mask": enc["attention_mask"].tolist()}
    inputs = tok("Once upon a time", return_tensors="pt").to("cpu")
    res["to_type"] = type(inputs).__name__
    src = (REPO / "llamacpu" / "tokenizer" / "chat.py").read_text()
    ns: dict = {}
    start = src.index("LLAMA2_CHAT_TEMPLATE = (")
    exec(src[start:src.index("\n)\n", start) + 3], ns)
    LLAMA2_CHAT_TEMPLATE = ns["LLAMA2_CHAT_TEMPLATE"]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell a story."}]
    ct = tok.apply_chat_template(msgs, chat_template=LLAMA2_CHAT_TEMPLATE, add_generation_prompt=True,
                                 tokenize=True, return_dict=True, return_tensors="np")
    res["chat_template"] = {"messages": msgs, "type": type(ct).__name__, "keys": list(ct.keys()),
                            "input_ids": ct["input_ids"].tolist(), "attention_mask": ct["attention_mask"].tolist(),
                            "default_return": type(tok.apply_chat_template(
                                msgs, chat_template=LLAMA2_CHAT_TEMPLATE, add_generation_prompt=True)).__name__}

    # the documentation page's AutoModel usage (device_map="auto" needs accelerate, not installed here)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="sdpa")
    inputs = tok("Once upon a time", return_tensors="pt").to(model.device)
    with torch.no_grad():
        o = model.generate(**inputs, max_new_tokens=30, cache_implementation="static", do_sample=False)
    res["automodel"] = {"text": tok.decode(o[0], skip_special_tokens=True), "ids": o[0].tolist(),
                        "generation_config": model.generation_config.to_dict(),
                        "dtype": str(model.dtype), "device": str(model.device)}
    model16 = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float16, attn_implementation="sdpa")
    with torch.no_grad():
        o16 = model16.generate(**tok("Once upon a time", return_tensors="pt"), max_new_tokens=30, do_sample=False)
    res["automodel_fp16_text"] = tok.decode(o16[0], skip_special_tokens=True)

    # pipeline: explicit greedy, and the checkpoint's generation_config.json deciding
    pipe = pipeline(task="text-generation", model=path, torch_dtype=torch.float32, device=-1)
    res["pipeline"] = pipe("Once upon a time", do_sample=False, max_new_tokens=30)
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(path, d, dirs_exist_ok=True)
        Path(d, "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 5, "do_sample": False}))
        pipe = pipeline(task="text-generation", model=d, torch_dtype=torch.float32)
        res["pipeline_generation_config"] = pipe("Once upon a time")

    # beam search on a real model; "." as EOS makes beams finish at different lengths
    ids = tok("Once upon a time", return_tensors="pt")
    dot = tok.convert_tokens_to_ids(".")
    res["beams"] = {}
    for name, kw in (("b4r2", dict(num_beams=4, num_return_sequences=2)),
                     ("b4r4_lp2", dict(num_beams=4, num_return_sequences=4, length_penalty=2.0)),
                     ("b3r2_lpm1", dict(num_beams=3, num_return_sequences=2, length_penalty=-1.0))):
        with torch.no_grad():
            o = model.generate(**ids, max_new_tokens=24, do_sample=False, eos_token_id=dot, pad_token_id=0,
                               return_dict_in_generate=True, output_scores=True, **kw)
        res["beams"][name] = {"kwargs": kw, "eos_token_id": dot, "sequences": o.sequences.tolist(),
                              "sequences_scores": o.sequences_scores.tolist(),
                              "texts": tok.batch_decode(o.sequences, skip_special_tokens=True)}
    with torch.no_grad():
        o = model.generate(**ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True,
                           output_scores=True)
    arrays["stories.greedy.scores"] = torch.stack(o.scores).numpy()
    arrays["stories.greedy.sequences"] = o.sequences.numpy()

    # AttentionMaskVisualizer(model_id)(text)
    from transformers.utils.attention_visualizer import AttentionMaskVisualizer

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        AttentionMaskVisualizer(path)("Once upon a time, there was")
    res["visualizer"] = {"model_id": path, "text": "Once upon a time, there was", "stdout": buf.getvalue()}
    out["stories"] = res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "models"))
    args = p.parse_args()
    shared = Path(args.shared)
    torch.manual_seed(0)
    out = {"versions": {"transformers": transformers.__version__, "torch": torch.__version__}}
    record_outputs(out)
    record_seq_cls(out)
    record_beams(out)
    record_greedy_dict(out)
    record_generation_config_file(out)
    record_config(out)
    if (shared / "stories260K").is_dir():
        record_tokenizers(out, shared)
        record_stories(out, shared)
    else:
        print(f"{shared}: not found, stories260K and tokenizer entries not recorded", file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reference.json").write_text(json.dumps(out, indent=1, ensure_ascii=False, default=str) + "\n")
    np.savez_compressed(OUT / "arrays.npz", **arrays)
    print(f"wrote {OUT}/reference.json and arrays.npz ({len(arrays)} arrays)")


if __name__ == "__main__":
    main()
