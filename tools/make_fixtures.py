"""Generate tiny random Llama checkpoints plus Hugging Face reference outputs.

The llamacpu test suite checks parity against the files this script writes to
``tests/fixtures/parity/<case>/``; the test suite itself never imports torch or
transformers.  Only this generator does, from its own virtual environment::

    python3 -m venv /work/fixenv
    /work/fixenv/bin/pip install torch==2.13.0          # CPU wheel
    /work/fixenv/bin/pip install transformers safetensors sentencepiece numpy
    /work/fixenv/bin/python tools/make_fixtures.py

Fixtures committed in the repository were produced with transformers 5.24.0
and torch 2.13.0+cpu (numpy 2.4.6, safetensors 0.8.0).

Every case folder holds:

* ``config.json``   -- written by hand (sorted keys, indent 2).  All cases but
  ``config_v5`` use the transformers 4.x style (``torch_dtype``,
  ``rope_theta`` and ``rope_scaling`` at top level); ``config_v5`` uses the
  5.x style (``dtype``, ``rope_parameters``).
* weights          -- ``model.safetensors``, or shards plus
  ``model.safetensors.index.json``, exactly as ``save_pretrained`` writes them
  (``lm_head.weight`` only when the embeddings are untied).
* ``reference.npz`` -- ``input_ids`` int64 [B,T], ``attention_mask`` int64
  [B,T], ``logits`` float32 [B,T,V] (fp32 forward, eager attention, checkpoint
  reloaded with ``dtype=torch.float32`` so 16-bit weights are upcast exactly),
  ``greedy_ids`` int64 [B,T+N] from ``generate(do_sample=False)`` with EOS
  disabled, ``greedy_margin`` float32 scalar (smallest top-1 minus top-2 logit
  gap over every greedy step), ``greedy_logits`` float32 [B,N,V] (raw logits
  of each generate step), plus case-specific extras described in ``meta.json``.
* ``meta.json``     -- case name, description, versions, ``max_new_tokens``,
  ``padding_side`` and notes on how the reference was produced.

Everything is seeded; the output files are byte-for-byte reproducible with the
same library versions (``.npz`` members carry a fixed zip timestamp).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GenerationConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO / "tests" / "fixtures" / "parity"

MAX_NEW_TOKENS = 12
# Required by the test plan: every greedy step must have a gap > 1e-3.  We are
# stricter so that fp32 accumulation-order differences can never flip a token.
MIN_MARGIN = 1e-2
MAX_RESEEDS = 20
# Each greedy continuation must contain at least this many distinct tokens, so
# that a fixture cannot pass by echoing one token (position bugs would hide).
MIN_DISTINCT = 5
RESIDUAL_GAIN = 3.0
ATTN_IMPL = "eager"
BOS, EOS = 1, 2

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------

def _case(name, description, **kw):
    base = dict(
        name=name,
        description=description,
        hidden=32,
        heads=4,
        kv_heads=4,
        head_dim=None,          # explicit head_dim for the config (None: derive)
        write_head_dim=False,   # write head_dim into config.json even if derived
        inter=64,
        vocab=128,
        layers=2,
        dtype="float32",
        tie=False,
        attention_bias=False,
        mlp_bias=False,
        pretraining_tp=1,
        rms_norm_eps=1e-5,
        max_pos=64,
        rope_theta=10000.0,
        rope_scaling=None,      # 4.x style dict, or None
        style="v4",             # "v4" or "v5" config.json layout
        minimal_v4=False,       # Llama-2 era config: no attention_bias/mlp_bias/head_dim keys
        eos_token_id=EOS,
        pad_token_id=None,
        shard_size=None,        # max_shard_size for save_pretrained
        lengths=[16],           # prompt length per batch row
        padded=False,
        seed=0,
    )
    base.update(kw)
    return base


CASES = [
    _case(
        "mha_f32",
        "Multi-head attention (4 heads / 4 kv heads), F32 weights, untied lm_head, "
        "minimal Llama-2 style config (no head_dim/attention_bias/mlp_bias keys).",
        hidden=32, heads=4, kv_heads=4, inter=64, vocab=128, dtype="float32", tie=False,
        minimal_v4=True, lengths=[16], seed=101,
    ),
    _case(
        "gqa_f16",
        "Grouped-query attention (8 heads / 2 kv heads), F16 weights, tied embeddings.",
        hidden=64, heads=8, kv_heads=2, inter=128, vocab=256, dtype="float16", tie=True,
        write_head_dim=True, rms_norm_eps=1e-6, lengths=[32], seed=202,
    ),
    _case(
        "mqa_bf16",
        "Multi-query attention (4 heads / 1 kv head), BF16 weights, untied lm_head.",
        hidden=32, heads=4, kv_heads=1, inter=96, vocab=192, dtype="bfloat16", tie=False,
        lengths=[8], seed=303,
    ),
    _case(
        "head_dim",
        "Explicit head_dim=16 different from hidden/heads=12 (hidden 48, 4 heads, 2 kv heads): "
        "q_proj is [64,48], o_proj is [48,64].",
        hidden=48, heads=4, kv_heads=2, head_dim=16, inter=64, vocab=128, tie=True,
        lengths=[20], seed=404,
    ),
    _case(
        "bias",
        "attention_bias=true and mlp_bias=true: q/k/v/o and gate/up/down projections all carry biases.",
        hidden=32, heads=4, kv_heads=2, inter=64, vocab=128, attention_bias=True, mlp_bias=True,
        lengths=[12], seed=505,
    ),
    _case(
        "sharded",
        "Same kind of model saved by save_pretrained(max_shard_size=48KB) into several "
        "safetensors shards with model.safetensors.index.json.",
        hidden=32, heads=4, kv_heads=2, inter=64, vocab=144, shard_size="48KB",
        lengths=[12], seed=606,
    ),
    _case(
        "rope_linear",
        "Linear RoPE scaling, factor 2, legacy key spelling {\"type\": \"linear\"}, "
        "max_position_embeddings 16, prompt of 40 tokens (+12 generated) runs past it. "
        "inv_freq = default inv_freq / factor.",
        hidden=64, heads=4, kv_heads=2, inter=64, vocab=128, tie=True,
        max_pos=16, rope_scaling={"type": "linear", "factor": 2.0},
        lengths=[40], seed=707,
    ),
    _case(
        "rope_dynamic",
        "Dynamic NTK RoPE scaling, factor 2, max_position_embeddings 16, prompt of 40 tokens. "
        "transformers recomputes the base per forward call from seq_len = max(position_ids)+1 "
        "(only when it grows past the cached length), see meta.json notes.",
        hidden=64, heads=4, kv_heads=2, inter=64, vocab=128, tie=True,
        max_pos=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0},
        lengths=[40], seed=808,
    ),
    _case(
        "rope_llama3",
        "Llama 3.1 RoPE scaling: factor 4, low_freq_factor 1, high_freq_factor 4, "
        "original_max_position_embeddings 32 (max_position_embeddings 128), rope_theta 10000, head_dim 16: "
        "frequency 0 is kept, frequency 1 is smoothed, frequencies 2..7 are divided by the factor. "
        "Prompt of 40 tokens (+12 generated) runs past the original context. eos_token_id is a list.",
        hidden=64, heads=4, kv_heads=2, inter=64, vocab=128, tie=True, write_head_dim=True,
        max_pos=128,
        rope_scaling={
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
            "rope_type": "llama3",
        },
        eos_token_id=[EOS, 3], lengths=[40], seed=909,
    ),
    _case(
        "config_v5",
        "transformers 5.x style config.json: rope_parameters {rope_type linear, factor 2, "
        "rope_theta 50000} and dtype instead of torch_dtype/rope_scaling/rope_theta.",
        hidden=32, heads=4, kv_heads=2, inter=64, vocab=128, style="v5", write_head_dim=True,
        rope_theta=50000.0, rope_scaling={"rope_type": "linear", "factor": 2.0},
        lengths=[24], seed=1010,
    ),
    _case(
        "padded_batch",
        "Batch of 3 prompts (lengths 20, 13, 8) left-padded with pad id 0; logits from the padded "
        "batch forward with position_ids = clamp(cumsum(mask)-1, min=0); logits_unpadded_<b> from "
        "each row alone; greedy_ids from batched generate.",
        hidden=32, heads=4, kv_heads=2, inter=64, vocab=128, pad_token_id=0,
        lengths=[20, 13, 8], padded=True, seed=1111,
    ),
    _case(
        "pretraining_tp",
        "pretraining_tp=2 in the config; transformers ignores it at inference (same math as tp=1).",
        hidden=32, heads=4, kv_heads=4, inter=64, vocab=128, pretraining_tp=2,
        lengths=[10], seed=1212,
    ),
]


# --------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------

def head_dim_of(case):
    return case["head_dim"] if case["head_dim"] is not None else case["hidden"] // case["heads"]


def make_config_dict(case):
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": case["attention_bias"],
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": case["eos_token_id"],
        "hidden_act": "silu",
        "hidden_size": case["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": case["inter"],
        "max_position_embeddings": case["max_pos"],
        "mlp_bias": case["mlp_bias"],
        "model_type": "llama",
        "num_attention_heads": case["heads"],
        "num_hidden_layers": case["layers"],
        "num_key_value_heads": case["kv_heads"],
        "pretraining_tp": case["pretraining_tp"],
        "rms_norm_eps": case["rms_norm_eps"],
        "tie_word_embeddings": case["tie"],
        "use_cache": True,
        "vocab_size": case["vocab"],
    }
    if case["head_dim"] is not None or case["write_head_dim"]:
        cfg["head_dim"] = head_dim_of(case)
    if case["pad_token_id"] is not None:
        cfg["pad_token_id"] = case["pad_token_id"]
    if case["style"] == "v4":
        cfg["torch_dtype"] = case["dtype"]
        cfg["rope_theta"] = case["rope_theta"]
        cfg["rope_scaling"] = dict(case["rope_scaling"]) if case["rope_scaling"] else None
        if case["minimal_v4"]:
            for key in ("attention_bias", "attention_dropout", "mlp_bias", "head_dim"):
                cfg.pop(key, None)
    else:
        rope = {"rope_theta": case["rope_theta"]}
        if case["rope_scaling"]:
            rope.update(case["rope_scaling"])
        else:
            rope["rope_type"] = "default"
        cfg["dtype"] = case["dtype"]
        cfg["rope_parameters"] = rope
        cfg["transformers_version"] = transformers.__version__
    return cfg


def expected_rope(case):
    """rope_parameters transformers should end up with after parsing config.json."""
    rope = {"rope_theta": case["rope_theta"], "rope_type": "default"}
    if case["rope_scaling"]:
        sc = dict(case["rope_scaling"])
        rope["rope_type"] = sc.pop("rope_type", sc.pop("type", None))
        rope.update(sc)
    return rope


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------

def build_model(case, seed):
    cfg_dict = make_config_dict(case)
    cfg_dict.pop("architectures")
    config = transformers.LlamaConfig(**{k: v for k, v in cfg_dict.items() if k != "transformers_version"})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    hidden = case["hidden"]
    with torch.no_grad():
        for name, p in model.named_parameters():   # tied lm_head is deduplicated
            if name.endswith("norm.weight"):
                vals = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif name.endswith("embed_tokens.weight"):
                # tied: this is also the lm_head, scaled so logits are peaked
                std = 2.5 / hidden ** 0.5 if case["tie"] else 1.0
                vals = std * torch.randn(p.shape, generator=gen)
            elif name == "lm_head.weight":
                vals = (2.5 / hidden ** 0.5) * torch.randn(p.shape, generator=gen)
            elif name.endswith(".bias"):
                vals = 0.1 * torch.randn(p.shape, generator=gen)
            else:
                # unit-variance projections; the residual-branch outputs (o_proj, down_proj) are scaled up
                # so that the layers, not the token's own embedding, dominate the final hidden state
                # (otherwise tied models just echo their last input token)
                fan_in = p.shape[1]
                gain = RESIDUAL_GAIN if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                vals = (gain / fan_in ** 0.5) * torch.randn(p.shape, generator=gen)
            p.copy_(vals)
    return model.to(TORCH_DTYPES[case["dtype"]])


def expected_tensor_names(case):
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not case["tie"]:
        names.add("lm_head.weight")
    for i in range(case["layers"]):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names.add(p + f"self_attn.{proj}.weight")
            if case["attention_bias"]:
                names.add(p + f"self_attn.{proj}.bias")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names.add(p + f"mlp.{proj}.weight")
            if case["mlp_bias"]:
                names.add(p + f"mlp.{proj}.bias")
    return names


def save_weights(model, case, out_dir):
    """save_pretrained into a scratch dir, keep only the weight files."""
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        kwargs = {"safe_serialization": True}
        if case["shard_size"]:
            kwargs["max_shard_size"] = case["shard_size"]
        try:
            model.save_pretrained(tmp, **kwargs)
        except TypeError:  # safe_serialization removed in some versions
            kwargs.pop("safe_serialization")
            model.save_pretrained(tmp, **kwargs)
        files = sorted(f for f in os.listdir(tmp) if f.endswith(".safetensors") or f.endswith(".index.json"))
        for f in files:
            shutil.copyfile(os.path.join(tmp, f), out_dir / f)
    shards = [f for f in files if f.endswith(".safetensors")]
    if case["shard_size"]:
        assert len(shards) >= 2 and "model.safetensors.index.json" in files, files
    else:
        assert files == ["model.safetensors"], files
    names = set()
    for f in shards:
        with safe_open(str(out_dir / f), framework="np" if case["dtype"] != "bfloat16" else "pt") as fh:
            names |= set(fh.keys())
    exp = expected_tensor_names(case)
    assert names == exp, (sorted(names ^ exp))
    return files


# --------------------------------------------------------------------------
# reference outputs
# --------------------------------------------------------------------------

def load_reference_model(case, out_dir):
    """A fresh fp32 model from the fixture folder (fresh => fresh RoPE state)."""
    model = LlamaForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32, attn_implementation=ATTN_IMPL)
    model.eval()
    model.generation_config.eos_token_id = None
    assert next(model.parameters()).dtype == torch.float32
    rope = model.config.rope_parameters
    for k, v in expected_rope(case).items():
        assert rope.get(k) == v, (case["name"], k, rope.get(k), v)
    assert model.model.rotary_emb.rope_type == expected_rope(case)["rope_type"]
    assert model.config.head_dim == head_dim_of(case)
    assert model.config.tie_word_embeddings == case["tie"]
    return model


def make_inputs(case, seed):
    rng = np.random.default_rng(seed)
    lengths = case["lengths"]
    T = max(lengths)
    ids = np.zeros((len(lengths), T), dtype=np.int64)
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for b, L in enumerate(lengths):
        ids[b, T - L:] = rng.integers(3, case["vocab"], size=L)
        mask[b, T - L:] = 1
    if not case["padded"]:
        assert mask.all()
    return ids, mask


def greedy(model, ids, mask, pad_id, use_cache=True):
    gcfg = GenerationConfig(
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=pad_id,
        bos_token_id=BOS,
        use_cache=use_cache,
    )
    with torch.no_grad():
        out = model.generate(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            generation_config=gcfg,
            return_dict_in_generate=True,
            output_logits=True,
        )
    seq = out.sequences.numpy().astype(np.int64)
    assert seq.shape == (ids.shape[0], ids.shape[1] + MAX_NEW_TOKENS), seq.shape
    assert (seq[:, : ids.shape[1]] == ids).all()
    step_logits = torch.stack(out.logits, dim=1).float()          # [B, N, V]
    assert (step_logits.argmax(-1).numpy() == seq[:, ids.shape[1]:]).all()
    top2 = step_logits.topk(2, dim=-1).values
    margin = float((top2[..., 0] - top2[..., 1]).min())
    return seq, margin, step_logits.numpy().astype(np.float32)


def forward_logits(model, ids, mask, explicit_positions):
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    kwargs = {"attention_mask": mask_t}
    if explicit_positions:
        kwargs["position_ids"] = (mask_t.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(ids_t, **kwargs).logits.float().numpy()


def compute_reference(case, out_dir, seed):
    ids, mask = make_inputs(case, seed)
    pad_id = case["pad_token_id"] if case["pad_token_id"] is not None else 0
    ref = {"input_ids": ids, "attention_mask": mask}
    extra_notes = {}

    ref["logits"] = forward_logits(load_reference_model(case, out_dir), ids, mask, case["padded"])
    seq, margin, step_logits = greedy(load_reference_model(case, out_dir), ids, mask, pad_id)
    ref["greedy_ids"] = seq
    ref["greedy_logits"] = step_logits
    margins = {"greedy_ids": margin}

    if case["padded"]:
        T = ids.shape[1]
        for b, L in enumerate(case["lengths"]):
            row_ids = ids[b:b + 1, T - L:]
            row_mask = np.ones_like(row_ids)
            ref[f"logits_unpadded_{b}"] = forward_logits(load_reference_model(case, out_dir), row_ids, row_mask, False)
            row_seq, row_margin, _ = greedy(load_reference_model(case, out_dir), row_ids, row_mask, pad_id)
            margins[f"unpadded_{b}"] = row_margin
            # batched greedy must agree with per-row greedy (both are argmax chains)
            assert (row_seq[0] == seq[b, T - L:]).all(), (b, row_seq, seq[b])
            diff = np.abs(ref[f"logits_unpadded_{b}"][0] - ref["logits"][b, T - L:]).max()
            extra_notes[f"max_abs_diff_padded_vs_unpadded_logits_row{b}"] = float(diff)

    if case["rope_scaling"] and expected_rope(case)["rope_type"] == "dynamic":
        seq_nc, margin_nc, step_logits_nc = greedy(
            load_reference_model(case, out_dir), ids, mask, pad_id, use_cache=False
        )
        ref["greedy_ids_no_cache"] = seq_nc
        ref["greedy_logits_no_cache"] = step_logits_nc
        extra_notes["max_abs_diff_greedy_logits_cache_vs_no_cache"] = float(np.abs(step_logits_nc - step_logits).max())
        margins["greedy_ids_no_cache"] = margin_nc
        extra_notes["greedy_ids_equals_greedy_ids_no_cache"] = bool((seq_nc == seq).all())

    ref["greedy_margin"] = np.float32(min(margins.values()))
    return ref, margins, extra_notes


def write_npz(path, arrays):
    """Like np.savez_compressed but byte-reproducible (fixed zip timestamps)."""
    import io

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            arr = np.asarray(arrays[key])
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


# --------------------------------------------------------------------------
# meta.json
# --------------------------------------------------------------------------

def make_meta(case, seed, files, margins, extra_notes):
    rope_type = expected_rope(case)["rope_type"]
    meta = {
        "case": case["name"],
        "description": case["description"],
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "max_new_tokens": MAX_NEW_TOKENS,
        "padding_side": "left" if case["padded"] else None,
        "seed": seed,
        "weights_dtype": case["dtype"],
        "weight_files": files,
        "config_style": "transformers-5.x" if case["style"] == "v5" else "transformers-4.x",
        "reference_dtype": "float32 (checkpoint loaded with from_pretrained(dtype=torch.float32); "
                           "16-bit weights are upcast exactly)",
        "attn_implementation": ATTN_IMPL,
        "eos_handling": "EOS disabled: generate() got GenerationConfig(eos_token_id=None) and the model's "
                        "generation_config.eos_token_id was set to None, so exactly max_new_tokens pure-argmax "
                        "tokens are produced; the config's eos id may appear in greedy_ids.",
        "cache_implementation": "transformers default for generate(): DynamicCache (no cache_implementation set)",
        "greedy_margin_note": "min over every greedy step of (top1 - top2) raw logits from generate(output_logits=True)",
        "greedy_logits_note": "greedy_logits float32 [B, N, V]: raw logits generate() produced at each of the N "
                              "steps (step 0 = last prompt position of the prefill; greedy_ids[:, T+i] = "
                              "argmax(greedy_logits[:, i]))",
        "greedy_margins": {k: round(v, 6) for k, v in margins.items()},
    }
    if case["padded"]:
        meta["pad_token_id"] = case["pad_token_id"]
        meta["prompt_lengths"] = case["lengths"]
        meta["position_ids"] = (
            "Forward pass got position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0) explicitly. "
            "generate() in this transformers version builds the same: cumsum(mask)-1, with pad positions "
            "filled with 0, then continues each row by +1 per new token."
        )
        meta["padded_logits_note"] = (
            "logits at positions where attention_mask==0 are whatever transformers computes for fully-masked "
            "query rows (not meaningful); compare only mask==1 positions. logits_unpadded_<b> [1, L_b, V] "
            "is row b alone (input_ids[b, mask[b]==1]) with positions 0..L_b-1. Per-row greedy generation "
            "was checked to give the same tokens as the batched greedy_ids."
        )
    if rope_type == "dynamic":
        meta["dynamic_rope_note"] = (
            "transformers' dynamic NTK: on every forward call seq_len = max(position_ids)+1 over the batch; "
            "if seq_len > max_seq_len_cached (initially max_position_embeddings) inv_freq is recomputed with "
            "base' = rope_theta * (factor*seq_len/max_pos - (factor-1)) ** (head_dim/(head_dim-2)) and "
            "max_seq_len_cached = seq_len (it only grows; it resets to the original frequencies when seq_len < "
            "max_position_embeddings). logits: one forward over T=40 tokens, i.e. base'(40) for all positions. "
            "greedy_ids: generate() with DynamicCache: the prefill rotates positions 0..39 with base'(40); "
            "decode step k (position 40+k, seq_len 41+k) recomputes base'(41+k) and rotates only the new "
            "query/key with it, while cached keys keep the rotation they were stored with. "
            "greedy_ids_no_cache: generate(use_cache=False), every step re-runs the whole sequence with "
            "base'(current length); greedy_logits / greedy_logits_no_cache hold the per-step logits of the two "
            "runs, which differ (see max_abs_diff_greedy_logits_cache_vs_no_cache) even where the argmax tokens "
            "coincide. Each reference was computed on a freshly loaded model, since the rotary module keeps "
            "state between calls (a later, shorter call would otherwise reuse the grown frequencies)."
        )
    if rope_type == "llama3":
        meta["llama3_rope_note"] = (
            "Static scaling (does not depend on sequence length): wavelen = 2*pi/inv_freq; wavelen < "
            "orig/high_freq_factor: kept; wavelen > orig/low_freq_factor: divided by factor; otherwise "
            "smoothed with s = (orig/wavelen - low)/(high - low): (1-s)*inv/factor + s*inv."
        )
    if case["style"] == "v5":
        meta["config_v5_note"] = (
            "config.json uses rope_parameters/dtype; transformers %s parsed it natively (the loaded "
            "config's rope_parameters were asserted to match)." % transformers.__version__
        )
    if case["pretraining_tp"] != 1:
        meta["pretraining_tp_note"] = "transformers ignores pretraining_tp in LlamaForCausalLM; math equals tp=1."
    meta.update(extra_notes)
    return meta


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

def build_case(case):
    out_dir = OUT_ROOT / case["name"]
    for attempt in range(MAX_RESEEDS):
        seed = case["seed"] + 1000 * attempt
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        model = build_model(case, seed)
        files = save_weights(model, case, out_dir)
        del model
        write_json(out_dir / "config.json", make_config_dict(case))
        ref, margins, extra = compute_reference(case, out_dir, seed)
        T = ref["input_ids"].shape[1]
        distinct = min(len(set(row[T:].tolist())) for row in ref["greedy_ids"])
        if float(ref["greedy_margin"]) > MIN_MARGIN and distinct >= MIN_DISTINCT:
            break
        print(f"  {case['name']}: seed {seed}: margin {float(ref['greedy_margin']):.2e}, "
              f"{distinct} distinct generated tokens; reseeding")
    else:
        raise RuntimeError(f"{case['name']}: no seed gave a greedy margin > {MIN_MARGIN}")
    assert float(ref["greedy_margin"]) > 1e-3
    write_npz(out_dir / "reference.npz", ref)
    write_json(out_dir / "meta.json", make_meta(case, seed, files, margins, extra))
    return ref, seed


def dir_size(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main(argv):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    wanted = set(argv[1:])
    unknown = wanted - {c["name"] for c in CASES}
    if unknown:
        raise SystemExit(f"unknown case(s): {sorted(unknown)}")
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    header = f"{'case':<15}{'dtype':<10}{'H':>4}{'nh':>4}{'kv':>4}{'hd':>4}{'V':>5} {'tie':<6}{'rope':<9}{'B':>2}{'T':>4}{'margin':>9}{'size':>9}"
    print(header)
    print("-" * len(header))
    for case in CASES:
        if wanted and case["name"] not in wanted:
            continue
        ref, seed = build_case(case)
        B, T = ref["input_ids"].shape
        print(
            f"{case['name']:<15}{case['dtype']:<10}{case['hidden']:>4}{case['heads']:>4}{case['kv_heads']:>4}"
            f"{head_dim_of(case):>4}{case['vocab']:>5} {str(case['tie']):<6}{expected_rope(case)['rope_type']:<9}"
            f"{B:>2}{T:>4}{float(ref['greedy_margin']):>9.4f}{dir_size(OUT_ROOT / case['name']) / 1024:>8.1f}K"
        )
    print(f"total size of {OUT_ROOT.relative_to(REPO)}: {dir_size(OUT_ROOT) / 1024:.1f} KiB")


if __name__ == "__main__":
    main(sys.argv)
