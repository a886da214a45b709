"""Bad checkpoints and bad arguments give one clear error from the LlamacpuError family."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from conftest import fuzz_tally
from llamacpu import (CheckpointError, ConfigError, InputError, LlamaConfig, LlamacpuError, LlamaForCausalLM,
                      LlamaModel, LlamaForSequenceClassification)
from llamacpu.checkpoint.safetensors_mmap import SafetensorsFile
from llamacpu.checkpoint.synthetic import write_synthetic
from llamacpu.checkpoint.writer import write_safetensors

FIXTURES = Path(__file__).parent / "fixtures" / "parity"


@pytest.fixture
def tiny(tmp_path):
    return write_synthetic(tmp_path / "tiny", "tiny", dtype="F32")


def header_of(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def rewrite(path, header, data):
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + data)


def test_missing_config(tmp_path, tiny):
    (tiny / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json not found"):
        LlamaForCausalLM.from_pretrained(tiny)


def test_missing_weights(tiny):
    (tiny / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        LlamaForCausalLM.from_pretrained(tiny)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        LlamaForCausalLM.from_pretrained(tmp_path / "nope")


@pytest.mark.parametrize("cut", [0, 5, 8, 40, -1, -100])
def test_truncated_safetensors(tiny, cut):
    f = tiny / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(raw[:cut] if cut >= 0 else raw[:len(raw) + cut])
    with pytest.raises(CheckpointError):
        LlamaForCausalLM.from_pretrained(tiny)


def test_bad_header_length(tiny):
    f = tiny / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[:8] = (2 ** 62).to_bytes(8, "little")
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="header length"):
        LlamaForCausalLM.from_pretrained(tiny)


def test_offsets_past_end(tiny):
    f = tiny / "model.safetensors"
    header, data = header_of(f)
    name = "model.norm.weight"
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [len(data) + 4, len(data) + 4 + (e - b)]
    rewrite(f, header, data)
    with pytest.raises(CheckpointError, match="outside the data section"):
        LlamaForCausalLM.from_pretrained(tiny)


def test_overlapping_tensors(tiny):
    f = tiny / "model.safetensors"
    header, data = header_of(f)
    a, b = "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"
    header[b]["data_offsets"] = list(header[a]["data_offsets"])
    rewrite(f, header, data)
    with pytest.raises(CheckpointError, match="overlap"):
        LlamaForCausalLM.from_pretrained(tiny)


def test_wrong_shape(tiny):
    f = tiny / "model.safetensors"
    header, data = header_of(f)
    header["model.norm.weight"]["shape"] = [32, 2]
    rewrite(f, header, data)
    with pytest.raises(CheckpointError, match="model.norm.weight.*shape"):
        LlamaForCausalLM.from_pretrained(tiny)


def test_wrong_dtype(tiny):
    f = tiny / "model.safetensors"
    header, data = header_of(f)
    header["model.norm.weight"]["dtype"] = "I32"
    rewrite(f, header, data)
    with pytest.raises(CheckpointError, match="dtype I32"):
        LlamaForCausalLM.from_pretrained(tiny)


def test_unknown_dtype_and_bad_json(tiny):
    f = tiny / "model.safetensors"
    header, data = header_of(f)
    header["model.norm.weight"]["dtype"] = "F8_E9"
    rewrite(f, header, data)
    with pytest.raises(CheckpointError, match="unknown dtype"):
        LlamaForCausalLM.from_pretrained(tiny)
    f.write_bytes((10).to_bytes(8, "little") + b"{not json}" + data)
    with pytest.raises(CheckpointError, match="corrupt"):
        LlamaForCausalLM.from_pretrained(tiny)


def test_missing_and_unexpected_tensors(tiny):
    f = tiny / "model.safetensors"
    header, data = header_of(f)
    del header["model.layers.1.mlp.up_proj.weight"]
    rewrite(f, header, data)
    with pytest.raises(CheckpointError, match="missing tensors: model.layers.1.mlp.up_proj.weight"):
        LlamaForCausalLM.from_pretrained(tiny)
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (tiny / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        LlamaForCausalLM.from_pretrained(tiny)


def test_nan_weights_named(tiny):
    f = tiny / "model.safetensors"
    header, data = header_of(f)
    b, _ = header["model.layers.1.self_attn.k_proj.weight"]["data_offsets"]
    data = bytearray(data)
    data[b:b + 4] = np.array([np.nan], np.float32).tobytes()
    rewrite(f, header, bytes(data))
    with pytest.raises(CheckpointError, match="k_proj.weight.*NaN"):
        LlamaForCausalLM.from_pretrained(tiny)
    LlamaForCausalLM.from_pretrained(tiny, check_finite=False)  # the documented escape hatch


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_safetensors_never_crash(tmp_path_factory, data):
    """Bit flips and truncations anywhere: load or raise a LlamacpuError, nothing else."""
    src = FIXTURES / "mha_f32"
    dst = tmp_path_factory.mktemp("fuzz")
    shutil.copy(src / "config.json", dst)
    raw = bytearray((src / "model.safetensors").read_bytes())
    n_header = int.from_bytes(raw[:8], "little") + 8
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(raw)))
        raw = raw[:cut]
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, max(0, min(len(raw), n_header) - 1)))
        if raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    (dst / "model.safetensors").write_bytes(bytes(raw))
    crashed = False
    try:
        model = LlamaForCausalLM.from_pretrained(dst, check_finite=False)
        model(np.array([[1, 2, 3]]))  # loaded: it must also run
    except LlamacpuError:
        pass
    except Exception:
        crashed = True
        raise
    finally:
        fuzz_tally("safetensors", crashed)


@pytest.mark.parametrize("field,value,match", [
    ("hidden_size", 0, "hidden_size"), ("num_attention_heads", -4, "num_attention_heads"),
    ("num_key_value_heads", 3, "does not divide"), ("vocab_size", "many", "vocab_size"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "rope_type"),
    ("rope_scaling", {"type": "linear", "factor": -1}, "factor"),
    ("model_type", "mistral", "model_type"), ("architectures", ["GPT2LMHeadModel"], "architectures"),
    ("hidden_act", "gelu", "hidden_act"), ("rms_norm_eps", float("nan"), "rms_norm_eps"),
    ("head_dim", 7, "even"), ("tie_word_embeddings", "yes", "tie_word_embeddings"),
])
def test_config_errors_name_the_field(field, value, match):
    d = json.loads((FIXTURES / "mha_f32" / "config.json").read_text())
    d[field] = value
    with pytest.raises(ConfigError, match=match):
        LlamaConfig.from_dict(d)


def test_config_styles_agree():
    v4 = dict(json.loads((FIXTURES / "rope_linear" / "config.json").read_text()))
    c4 = LlamaConfig.from_dict(v4)
    v5 = {k: v for k, v in v4.items() if k not in ("rope_scaling", "rope_theta", "torch_dtype")}
    v5["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    v5["dtype"] = "float32"
    c5 = LlamaConfig.from_dict(v5)
    assert (c4.rope_type, c4.rope_scaling["factor"], c4.rope_theta) == (c5.rope_type, 2.0, 10000.0)
    assert c5.torch_dtype == "float32"


def test_config_corrupt_json(tmp_path):
    (tmp_path / "config.json").write_text("{ nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LlamaConfig.from_pretrained(tmp_path)


def test_input_errors(tiny):
    model = LlamaForCausalLM.from_pretrained(tiny, max_context=8)
    with pytest.raises(InputError, match="out of range"):
        model(np.array([[1, 256]]))
    with pytest.raises(InputError, match="out of range"):
        model(np.array([[-1]]))
    with pytest.raises(InputError, match="exceeds the context of 8"):
        model(np.ones((1, 9), np.int64))
    with pytest.raises(InputError, match="exceeds the context"):
        model.generate(np.ones((1, 5), np.int64), max_new_tokens=5)
    with pytest.raises(InputError, match="integers"):
        model(np.array([[1.5]]))
    with pytest.raises(InputError, match="attention_mask"):
        model(np.array([[1, 2]]), attention_mask=np.array([[1, 1, 1]]))
    with pytest.raises(InputError, match="shape"):
        model(np.zeros((1, 0), np.int64))
    with pytest.raises(InputError, match="dtype"):
        LlamaForCausalLM.from_pretrained(tiny, dtype="float8")
    model(np.array([[1, 2, 3, 4, 5, 6, 7, 8]]))  # still usable after the errors


def test_heads_and_loss(tiny):
    ids = np.array([[5, 6, 7, 8, 9]])
    lm = LlamaForCausalLM.from_pretrained(tiny)
    out = lm(ids, labels=ids)
    logits = out.logits[0, :-1].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    assert out.loss == pytest.approx(-logp[np.arange(4), ids[0, 1:]].mean(), rel=1e-5)
    hidden = LlamaModel.from_pretrained(tiny)(ids).last_hidden_state
    np.testing.assert_allclose(lm.head(lm.weights.lm_head, hidden), out.logits, rtol=1e-5, atol=1e-5)
    assert out["logits"] is out.logits


def test_sequence_classification(tmp_path):
    path = write_synthetic(tmp_path / "cls", "tiny", pad_token_id=0, architectures=["LlamaForSequenceClassification"])
    from llamacpu.checkpoint.safetensors_mmap import SafetensorsFile
    st_file = SafetensorsFile(path / "model.safetensors")
    entries = [(n, "F32", st_file.tensors[n][1], np.array(st_file.get(n))) for n in st_file.keys()]
    score = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    entries.append(("score.weight", "F32", (2, 64), score))
    del st_file
    write_safetensors(path / "model.safetensors", entries)
    clf = LlamaForSequenceClassification.from_pretrained(path)
    base = LlamaModel.from_pretrained(path)
    ids = np.array([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = (ids != 0).astype(np.int64)
    out = clf(ids, attention_mask=mask)
    hidden = base(ids, attention_mask=mask).last_hidden_state
    np.testing.assert_allclose(out.logits, hidden[:, -1] @ score.T, rtol=1e-4, atol=1e-5)
