"""The transformers drop-in surface (issue 14): each usage returns what transformers 5.24 returns, checked
against values recorded from transformers by tools/make_hf_compat_reference.py (tests/fixtures/hf_compat).
Fixture-based checks run everywhere; those on stories260K and the Llama 2 tokenizer skip without ../shared.
"""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import llamacpu
from llamacpu import (AutoModelForCausalLM, InputError, LlamaConfig, LlamaForCausalLM,
                      LlamaForSequenceClassification, LlamaModel, UnsupportedError)

HERE = Path(__file__).parent
PARITY = HERE / "fixtures" / "parity"
REF = json.loads((HERE / "fixtures" / "hf_compat" / "reference.json").read_text())
ARR = dict(np.load(HERE / "fixtures" / "hf_compat" / "arrays.npz"))
SHARED = HERE.parent.parent / "shared" / "models"
STORIES = SHARED / "stories260K"
needs_shared = pytest.mark.skipif(not STORIES.is_dir(), reason="needs ../shared/models (stories260K, Llama 2 tokenizer)")


def case(name):
    return dict(np.load(PARITY / name / "reference.npz"))


def close(ours, theirs, rel=1e-4):
    theirs = np.asarray(theirs)
    tol = rel * max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(np.asarray(ours, np.float64) - theirs).max())
    assert err <= tol, f"max |Δ| {err:.3g} > {tol:.3g}"


# ---- output objects, hidden states, attentions ---------------------------------------------------------

@pytest.mark.parametrize("name", ["mha_f32", "padded_batch"])
def test_outputs_hidden_states_and_attentions_match_transformers(name):
    rec, r = REF["outputs"][name], case(name)
    model = LlamaForCausalLM.from_pretrained(PARITY / name)
    ids, mask = r["input_ids"], r["attention_mask"]
    o = model(ids, attention_mask=mask, labels=ids, output_hidden_states=True, output_attentions=True)
    assert type(o).__name__ == rec["type"] and o.keys() == rec["keys"] and len(o.to_tuple()) == rec["tuple_len"]
    assert o[0] == o["loss"] == o.loss and o[1] is o.logits and o.past_key_values is o.cache
    assert len(o.hidden_states) == rec["n_hidden_states"] and len(o.attentions) == rec["n_attentions"]
    keep = mask.astype(bool)
    for i, h in enumerate(o.hidden_states):
        close(h[keep], ARR[f"{name}.hidden_states.{i}"][keep])
    for i, a in enumerate(o.attentions):  # rows of real query tokens; padded keys get probability 0 in both
        theirs = ARR[f"{name}.attentions.{i}"]
        assert a.shape == theirs.shape
        close(a.transpose(0, 2, 1, 3)[keep], theirs.transpose(0, 2, 1, 3)[keep])
    if name == "mha_f32":
        assert o.loss == pytest.approx(rec["loss"], rel=1e-5)
    plain = model(ids, attention_mask=mask)
    assert plain.keys() == rec["plain_keys"] and plain[0] is plain.logits
    assert model(ids, attention_mask=mask, return_dict=False)[0].shape == plain.logits.shape
    base = LlamaModel.from_pretrained(PARITY / name)(ids, attention_mask=mask, output_hidden_states=True)
    assert type(base).__name__ == rec["base_type"] and base.keys() == rec["base_keys"]
    close(base.hidden_states[-1][keep], ARR[f"{name}.hidden_states.{len(base.hidden_states) - 1}"][keep])


def test_forward_refuses_unknown_keywords_with_the_known_list():
    model = LlamaForCausalLM.from_pretrained(PARITY / "mha_f32")
    with pytest.raises(InputError, match="unknown arguments \\['inputs_embeds'\\].*known: input_ids"):
        model([1, 2, 3], inputs_embeds=np.zeros((1, 3, 32)))
    model([1, 2, 3], use_cache=True)  # documented no-op


def test_sequence_classification_from_a_causal_checkpoint_initialises_score_with_a_warning():
    rec, r = REF["seq_cls"], case("mha_f32")
    llamacpu.set_seed(0)
    with pytest.warns(UserWarning, match="newly initialized: \\['score.weight'\\]"):
        model = LlamaForSequenceClassification.from_pretrained(PARITY / "mha_f32")
    o = model(r["input_ids"])
    assert type(o).__name__ == rec["type"] and o.keys() == rec["keys"]
    assert list(o.logits.shape) == rec["logits_shape"] and list(model.weights.score.shape) == rec["score_shape"]
    std = float(model.weights.score.dequantize().std())
    assert 0.5 * rec["score_std"] < std < 2 * rec["score_std"]  # N(0, initializer_range=0.02) in both


# ---- generate: beams, scores, lengths, generation_config ---------------------------------------------------

BEAMS = sorted(REF["beams"])


@pytest.mark.parametrize("key", BEAMS)
def test_beam_search_matches_transformers(key):
    rec = REF["beams"][key]
    name = key.split(".")[0]
    r = case(name)
    model = LlamaForCausalLM.from_pretrained(PARITY / name)
    o = model.generate(r["input_ids"], attention_mask=r["attention_mask"], do_sample=False,
                       eos_token_id=rec["eos_token_id"], pad_token_id=rec["pad_token_id"],
                       return_dict_in_generate=True, output_scores=True, **rec["kwargs"])
    assert type(o).__name__ == rec["type"] and o.keys() == rec["keys"]
    np.testing.assert_array_equal(o.sequences, ARR[f"beam.{key}.sequences"])
    close(o.sequences_scores, ARR[f"beam.{key}.sequences_scores"])
    close(np.stack(o.scores), ARR[f"beam.{key}.scores"])
    np.testing.assert_array_equal(o.beam_indices, ARR[f"beam.{key}.beam_indices"])
    plain = model.generate(r["input_ids"], attention_mask=r["attention_mask"], eos_token_id=rec["eos_token_id"],
                           pad_token_id=rec["pad_token_id"], **rec["kwargs"])
    np.testing.assert_array_equal(plain, o.sequences)


@pytest.mark.parametrize("name", sorted(REF["greedy_dict"]))
def test_greedy_scores_logits_and_max_length_match_transformers(name):
    rec, r = REF["greedy_dict"][name], case(name)
    model = LlamaForCausalLM.from_pretrained(PARITY / name)
    kw = dict(attention_mask=r["attention_mask"], do_sample=False, eos_token_id=[], pad_token_id=0)
    o = model.generate(r["input_ids"], max_new_tokens=6, return_dict_in_generate=True, output_scores=True,
                       output_logits=True, **kw)
    assert type(o).__name__ == rec["type"] and o.keys() == rec["keys"] and len(o.scores) == rec["n_scores"]
    np.testing.assert_array_equal(o.sequences, ARR[f"greedy.{name}.sequences"])
    close(np.stack(o.scores), ARR[f"greedy.{name}.scores"])
    close(np.stack(o.logits), ARR[f"greedy.{name}.logits"])
    T = r["input_ids"].shape[1]
    np.testing.assert_array_equal(model.generate(r["input_ids"], max_length=T + 4, **kw), ARR[f"max_length.{name}.sequences"])
    o = model.generate(r["input_ids"], max_new_tokens=4, repetition_penalty=1.3, return_dict_in_generate=True,
                       output_scores=True, **kw)
    np.testing.assert_array_equal(o.sequences, ARR[f"greedy_rp.{name}.sequences"])
    close(np.stack(o.scores), ARR[f"greedy_rp.{name}.scores"])


def test_generation_config_json_is_read_and_used(tmp_path):
    rec, r = REF["generation_config_file"], case("mha_f32")
    shutil.copytree(PARITY / "mha_f32", tmp_path, dirs_exist_ok=True)
    (tmp_path / "generation_config.json").write_text(json.dumps(rec["file"]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert {k: getattr(model.generation_config, k) for k in rec["model_generation_config"]} == rec["model_generation_config"]
    out = model.generate(r["input_ids"], attention_mask=r["attention_mask"])
    assert out.shape[1] - r["input_ids"].shape[1] == rec["new_tokens"]
    np.testing.assert_array_equal(out, ARR["generation_config_file.sequences"])
    gc = llamacpu.GenerationConfig(max_new_tokens=2)  # generation_config= overrides the file; kwargs override both
    assert model.generate(r["input_ids"], generation_config=gc).shape[1] == r["input_ids"].shape[1] + 2
    assert model.generate(r["input_ids"], generation_config=gc, max_new_tokens=3).shape[1] == r["input_ids"].shape[1] + 3


def test_num_return_sequences_sampling_and_documented_refusals():
    r = case("mha_f32")
    model = LlamaForCausalLM.from_pretrained(PARITY / "mha_f32")
    out = model.generate(r["input_ids"], do_sample=True, num_return_sequences=3, max_new_tokens=4, seed=1)
    assert out.shape == (3, r["input_ids"].shape[1] + 4)
    with pytest.raises(InputError, match="num_return_sequences > 1 needs do_sample=True or num_beams"):
        model.generate(r["input_ids"], num_return_sequences=2, max_new_tokens=2)
    with pytest.raises(InputError, match="unknown arguments \\['num_beam_groups'\\] \\(known: .*num_beams"):
        model.generate(r["input_ids"], num_beam_groups=2)
    out = model.generate(r["input_ids"], max_new_tokens=2, cache_implementation="static", use_cache=True)  # no-ops
    assert out.shape[1] == r["input_ids"].shape[1] + 2


def test_default_length_is_transformers_max_length_20():
    r = case("mha_f32")  # 16 prompt tokens: transformers' default max_length=20 leaves 4 new ones
    model = LlamaForCausalLM.from_pretrained(PARITY / "mha_f32")
    assert model.generate(r["input_ids"], eos_token_id=[]).shape[1] == 20


def test_returned_past_key_values_stay_valid_after_another_call():
    r = case("mha_f32")
    model = LlamaForCausalLM.from_pretrained(PARITY / "mha_f32")
    ids = r["input_ids"]
    first = model(ids[:, :10])
    model(ids[:, 3:9])  # another call in between
    cont = model(ids[:, 10:11], past_key_values=first.past_key_values)
    close(cont.logits[:, -1], model(ids[:, :11]).logits[:, -1], rel=1e-5)


# ---- configuration and models from a config ------------------------------------------------------------

def test_llama_config_documented_arguments_to_dict_json_and_save(tmp_path):
    rec = REF["config"]
    c = LlamaConfig(**rec["kwargs"])
    assert c.to_dict() == rec["to_dict"]
    assert LlamaConfig().to_dict() == {**rec["default_to_dict"], "rope_parameters": rec["default_to_dict"]["rope_parameters"]}
    assert c.to_json_string() == rec["to_json_string"]
    c.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == rec["saved_files"]
    assert json.loads((tmp_path / "config.json").read_text()) == rec["saved"]
    back = LlamaConfig.from_pretrained(tmp_path)
    assert (back.rope_type, back.rope_theta, back.initializer_range, back.use_cache) == ("linear", 50000.0, 0.01, False)
    with pytest.raises(TypeError):
        LlamaConfig(not_an_argument=1)


def test_model_from_config_random_init_with_zero_padding_row():
    rec = REF["from_config"]
    kw = {k: v for k, v in REF["config"]["kwargs"].items() if k != "pad_token_id"}
    model = LlamaModel(LlamaConfig(pad_token_id=0, **kw), seed=0)
    emb = model.get_input_embeddings()
    assert emb.padding_idx == rec["padding_idx"] and np.abs(emb.weight[0]).max() == rec["embed_row0_absmax"]
    assert abs(emb.weight[1:].std() - rec["embed_std"]) < 0.1 * rec["embed_std"]
    assert abs(model.weights.layers[0].wq.dequantize().std() - rec["q_std"]) < 0.1 * rec["q_std"]
    assert sorted(set(model.weights.norm.tolist())) == rec["norm_values"]
    again = LlamaModel(LlamaConfig(pad_token_id=0, **kw), seed=0)
    np.testing.assert_array_equal(again.get_input_embeddings().weight, emb.weight)
    out = model(np.array([[0, 5, 6]]))
    assert out.last_hidden_state.shape == (1, 3, 32)
    lm = AutoModelForCausalLM.from_config(LlamaConfig(**kw), seed=1)
    assert lm.generate([1, 2, 3], max_new_tokens=3).shape == (1, 6)


def test_model_surface_device_dtype_eval_to_and_save_pretrained(tmp_path):
    r = case("gqa_f16")
    model = AutoModelForCausalLM.from_pretrained(PARITY / "gqa_f16", torch_dtype="auto")
    assert (model.device, model.dtype) == ("cpu", "float16")
    assert model.eval() is model and model.to("cpu") is model and model.to(model.device) is model
    with pytest.raises(UnsupportedError, match="device="):
        model.to("cuda")
    assert model.get_input_embeddings().weight.shape == (256, 64)
    model.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path)
    assert again.dtype == "float16"
    close(again(r["input_ids"]).logits, model(r["input_ids"]).logits, rel=0)
    q = AutoModelForCausalLM.from_pretrained(PARITY / "gqa_f16", quantization="q8_0")
    q.save_pretrained(tmp_path / "q")
    close(LlamaForCausalLM.from_pretrained(tmp_path / "q")(r["input_ids"]).logits, q(r["input_ids"]).logits, rel=0)
    with pytest.warns(UserWarning, match="re-quantizing q8_0 blocks to q4_1"):  # as a quantized GGUF would
        again = LlamaForCausalLM.from_pretrained(tmp_path / "q", quantization_config=llamacpu.TorchAoConfig(
            llamacpu.Int4WeightOnlyConfig(group_size=32)))
    assert again.weights.layers[0].wq.dtype == "q4_1"


def test_from_pretrained_transformers_keywords():
    model = AutoModelForCausalLM.from_pretrained(PARITY / "mqa_bf16", torch_dtype="torch.float32",
                                                 attn_implementation="sdpa", device_map="cpu",
                                                 low_cpu_mem_usage=True)
    assert model.dtype == "float32"
    with pytest.warns(UserWarning, match="running on the CPU"):
        if not llamacpu.model.hf_surface._cuda_available():
            LlamaForCausalLM.from_pretrained(PARITY / "mqa_bf16", device=0)
        else:
            warnings.warn("running on the CPU")  # a GPU machine: device=0 is the GPU, nothing to warn about
    with pytest.raises(InputError, match="unknown arguments \\['output_loading_info'\\].*known: dtype"):
        LlamaForCausalLM.from_pretrained(PARITY / "mqa_bf16", output_loading_info=True)
    with pytest.raises(InputError, match="attn_implementation='magic'"):
        LlamaForCausalLM.from_pretrained(PARITY / "mqa_bf16", attn_implementation="magic")


def test_quantization_config_classes_map_to_block_formats():
    from llamacpu import BitsAndBytesConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig, TorchAoConfig

    assert TorchAoConfig("int4_weight_only", group_size=128).llamacpu_format() == "int4_g128"
    assert TorchAoConfig(Int4WeightOnlyConfig(group_size=128)).llamacpu_format() == "int4_g128"
    assert TorchAoConfig(Int4WeightOnlyConfig(group_size=32)).llamacpu_format() == "q4_1"
    assert TorchAoConfig("int8_weight_only").llamacpu_format() == "q8_0"
    assert TorchAoConfig(Int8WeightOnlyConfig()).llamacpu_format() == "q8_0"
    assert BitsAndBytesConfig(load_in_8bit=True).llamacpu_format() == "q8_0"
    with pytest.raises(UnsupportedError, match="group_size=64.*int4_g128, q4_1"):
        TorchAoConfig("int4_weight_only", group_size=64).llamacpu_format()
    with pytest.raises(UnsupportedError, match="float8.*q8_0, q4_0"):
        TorchAoConfig("float8_weight_only")
    with pytest.raises(UnsupportedError, match="NF4"):
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4").llamacpu_format()
    r = case("gqa_f16")  # hidden 64: int4_g128 falls back per matrix exactly as quantization="int4_g128" does
    a = LlamaForCausalLM.from_pretrained(PARITY / "gqa_f16",
                                         quantization_config=TorchAoConfig(Int4WeightOnlyConfig(group_size=32)))
    b = LlamaForCausalLM.from_pretrained(PARITY / "gqa_f16", quantization="q4_1")
    assert a.weights.layers[0].wq.dtype == "q4_1"
    np.testing.assert_array_equal(a(r["input_ids"]).logits, b(r["input_ids"]).logits)


# ---- tokenizers --------------------------------------------------------------------------------------------

TEXTS = ["Once upon a time", "Hello world", " leading space", "Tim said, \"Hi!\"\nThe end.", "ünïcødé 😀 x",
         "two  spaces", "<s> inside", ""]


@needs_shared
@pytest.mark.parametrize("name", ["stories260K", "llama2-tokenizer"])
def test_fast_tokenizer_converted_from_tokenizer_model_only(name, tmp_path):
    rec = REF["tokenizers"][name]
    shutil.copy(SHARED / name / "tokenizer.model", tmp_path)
    tok = llamacpu.LlamaTokenizerFast.from_pretrained(tmp_path)
    assert (len(tok), tok.vocab_size, tok.padding_side) == (rec["len"], rec["vocab_size"], rec["padding_side"])
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (rec["bos"], rec["eos"], rec["unk"], rec["pad"])
    assert [tok.encode(t) for t in TEXTS] == rec["encode"]
    assert [tok.tokenize(t) for t in TEXTS] == rec["tokenize"]
    assert [tok.decode(tok.encode(t)) for t in TEXTS] == rec["decode"]
    assert [tok.decode(tok.encode(t), skip_special_tokens=True) for t in TEXTS] == rec["decode_skip"]
    out = tmp_path / "saved"
    out.mkdir()
    assert [Path(p).name for p in tok.save_vocabulary(out)] == rec["save_vocabulary"]
    assert (out / "tokenizer.model").read_bytes() == (SHARED / name / "tokenizer.model").read_bytes()


@needs_shared
def test_fast_tokenizer_4x_helpers_agree_with_the_slow_tokenizer():
    # transformers 5 dropped these from LlamaTokenizerFast; llamacpu keeps them with 4.x semantics,
    # which are the slow LlamaTokenizer's (add_bos_token=True, add_eos_token=False here)
    slow = llamacpu.LlamaTokenizer.from_pretrained(STORIES)
    fast = llamacpu.LlamaTokenizerFast.from_pretrained(STORIES)
    assert fast.add_bos_token and not fast.add_eos_token
    for tok in (slow, fast):
        assert tok.build_inputs_with_special_tokens([5, 6, 7]) == [1, 5, 6, 7]
        assert tok.build_inputs_with_special_tokens([5, 6], [7]) == [1, 5, 6, 1, 7]
        assert tok.get_special_tokens_mask([5, 6], [7]) == [1, 0, 0, 1, 0]
        assert tok.get_special_tokens_mask([1, 5, 2], already_has_special_tokens=True) == [1, 0, 1]
        assert tok.create_token_type_ids_from_sequences([5, 6], [7]) == [0, 0, 0, 1, 1]
    assert fast.encode("Once upon a time") == slow.encode("Once upon a time")


@needs_shared
def test_tokenizer_left_padding_to_and_pt_error():
    rec = REF["stories"]
    tok = llamacpu.AutoTokenizer.from_pretrained(STORIES)
    assert type(tok).__name__ == rec["tokenizer_class"] and tok.padding_side == rec["padding_side"]
    tok.pad_token = tok.eos_token
    enc = tok(["Once upon a time", "Hi"], padding=True, return_tensors="np")
    assert enc["input_ids"].tolist() == rec["padded"]["input_ids"]
    assert enc["attention_mask"].tolist() == rec["padded"]["attention_mask"]
    inputs = tok("Once upon a time", return_tensors="np").to("cuda")
    assert type(inputs).__name__ == rec["to_type"] and inputs.to(0) is inputs
    for t in (tok, llamacpu.LlamaTokenizerFast.from_pretrained(STORIES)):
        with pytest.raises(llamacpu.LlamacpuError, match="return_tensors='pt'.*no torch.*return_tensors='np'"):
            t("Hi", return_tensors="pt")


@needs_shared
def test_apply_chat_template_return_dict_and_np():
    from llamacpu.tokenizer.chat import LLAMA2_CHAT_TEMPLATE

    rec = REF["stories"]["chat_template"]
    tok = llamacpu.AutoTokenizer.from_pretrained(STORIES)
    out = tok.apply_chat_template(rec["messages"], chat_template=LLAMA2_CHAT_TEMPLATE, add_generation_prompt=True,
                                  tokenize=True, return_dict=True, return_tensors="np")
    assert type(out).__name__ == rec["type"] and list(out.keys()) == rec["keys"]
    assert isinstance(out["input_ids"], np.ndarray) and out["input_ids"].tolist() == rec["input_ids"]
    assert out["attention_mask"].tolist() == rec["attention_mask"]
    ids = tok.apply_chat_template(rec["messages"], chat_template=LLAMA2_CHAT_TEMPLATE, add_generation_prompt=True)
    assert ids == rec["input_ids"][0]  # the default stays 4.x's list of ids (README: a deliberate difference)


# ---- the documentation page's usages on stories260K ----------------------------------------------------------

@needs_shared
def test_automodel_usage_from_the_documentation_page():
    rec = REF["stories"]["automodel"]
    tok = llamacpu.AutoTokenizer.from_pretrained(STORIES)
    model = AutoModelForCausalLM.from_pretrained(STORIES, torch_dtype="float32", device_map="auto",
                                                 attn_implementation="sdpa")
    inputs = tok("Once upon a time", return_tensors="np").to(model.device)
    out = model.generate(**inputs, max_new_tokens=30, cache_implementation="static", do_sample=False)
    assert out[0].tolist() == rec["ids"]
    assert tok.decode(out[0], skip_special_tokens=True) == rec["text"]
    half = AutoModelForCausalLM.from_pretrained(STORIES, torch_dtype="float16")  # the page's dtype
    out = half.generate(**tok("Once upon a time", return_tensors="np"), max_new_tokens=30, do_sample=False)
    assert tok.decode(out[0], skip_special_tokens=True) == REF["stories"]["automodel_fp16_text"]
    assert (model.generation_config.bos_token_id, model.generation_config.eos_token_id) == (
        rec["generation_config"]["bos_token_id"], [rec["generation_config"]["eos_token_id"]])


@needs_shared
def test_pipeline_usage_and_generation_config_defaults(tmp_path):
    rec = REF["stories"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # device=0 on a machine without a GPU: "running on the CPU"
        pipe = llamacpu.pipeline(task="text-generation", model=str(STORIES), torch_dtype="float32", device=0)
    assert pipe("Once upon a time", do_sample=False, max_new_tokens=30) == rec["pipeline"]
    shutil.copytree(STORIES, tmp_path, dirs_exist_ok=True)
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 5, "do_sample": False}))
    pipe = llamacpu.pipeline(task="text-generation", model=str(tmp_path), torch_dtype="float32")
    assert pipe("Once upon a time") == rec["pipeline_generation_config"]


@needs_shared
@pytest.mark.parametrize("name", sorted(REF.get("stories", {}).get("beams", {})))
def test_beam_search_on_stories_matches_transformers(name):
    rec = REF["stories"]["beams"][name]
    tok = llamacpu.AutoTokenizer.from_pretrained(STORIES)
    model = AutoModelForCausalLM.from_pretrained(STORIES)
    o = model.generate(**tok("Once upon a time", return_tensors="np"), max_new_tokens=24, do_sample=False,
                       eos_token_id=rec["eos_token_id"], pad_token_id=0, return_dict_in_generate=True,
                       output_scores=True, **rec["kwargs"])
    assert o.sequences.tolist() == rec["sequences"]
    close(o.sequences_scores, rec["sequences_scores"])
    assert tok.batch_decode(o.sequences, skip_special_tokens=True) == rec["texts"]


@needs_shared
def test_greedy_scores_on_stories_match_transformers():
    tok = llamacpu.AutoTokenizer.from_pretrained(STORIES)
    model = AutoModelForCausalLM.from_pretrained(STORIES)
    o = model.generate(**tok("Once upon a time", return_tensors="np"), max_new_tokens=8, do_sample=False,
                       return_dict_in_generate=True, output_scores=True)
    np.testing.assert_array_equal(o.sequences, ARR["stories.greedy.sequences"])
    close(np.stack(o.scores), ARR["stories.greedy.scores"])


@needs_shared
def test_attention_mask_visualizer_prints_transformers_rows(capsys):
    from llamacpu.utils.attention_visualizer import AttentionMaskVisualizer

    rec = REF["stories"]["visualizer"]
    AttentionMaskVisualizer(str(STORIES))(rec["text"])
    ours = capsys.readouterr().out.splitlines()
    theirs = rec["stdout"].splitlines()
    assert ours[4:-1] == theirs[4:-1]  # legend, title and one row per token; the box width names the class
    assert f"llama:{STORIES}" in ours[2] and len(ours) == len(theirs)


@needs_shared
def test_chat_cli_accepts_transformers_flag_names():
    import subprocess
    import sys

    def run(*flags):
        return subprocess.run([sys.executable, "-m", "llamacpu.cli", "chat", *flags, "--temp", "0", "-n", "8",
                               "--quiet"], input="Hello\n/exit\n", capture_output=True, text=True, timeout=300)

    theirs = run("--model_name_or_path", str(STORIES), "--torch_dtype", "auto", "--attn_implementation", "sdpa")
    ours = run(str(STORIES))
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout == ours.stdout and theirs.stdout.strip()


def test_from_pretrained_takes_a_hub_id(tmp_path):
    """AutoModelForCausalLM.from_pretrained("org/name") reads the standard Hub cache (offline here)."""
    import os
    import subprocess
    import sys

    from test_hub import build_cache

    build_cache(tmp_path / "hub", "llamacpu-test/tiny")
    script = ("import numpy as np, llamacpu\n"
              "m = llamacpu.AutoModelForCausalLM.from_pretrained('llamacpu-test/tiny', revision='main')\n"
              "print(m.name_or_path, m(np.array([[1, 2, 3]])).logits.shape)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["llamacpu-test/tiny", "(1,", "3,", "128)"]  # name_or_path keeps the id


@needs_shared
def test_pipeline_beam_search_returns_transformers_sequences():
    rec = REF["stories"]["beams"]["b4r2"]
    pipe = llamacpu.pipeline("text-generation", model=str(STORIES))
    out = pipe("Once upon a time", max_new_tokens=24, do_sample=False, eos_token_id=rec["eos_token_id"],
               pad_token_id=0, **rec["kwargs"])
    assert [o["generated_text"] for o in out] == rec["texts"]
    with pytest.raises(UnsupportedError, match="num_beams.*model.generate"):
        list(llamacpu.stream(pipe.model, pipe.tokenizer, "Hi", num_beams=2))


def test_oversized_config_is_refused_before_allocating():
    import os

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    layers = int(ram // (4 * 202_000_000)) + 2  # Llama 2 7B layers (202M parameters each) past this RAM
    with pytest.raises(InputError, match="B parameters .* GiB in float32.*smaller sizes"):
        LlamaModel(LlamaConfig(pad_token_id=0, num_hidden_layers=layers))
