"""Reliability: hostile files, concurrency, fork, long runs, interrupts, determinism."""
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from conftest import fuzz_tally
from llamacpu import InputError, LlamacpuError, LlamaForCausalLM, LlamaTokenizer
from llamacpu.checkpoint.synthetic import write_synthetic
from llamacpu.tokenizer.fast import LlamaTokenizerFast

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("rel") / "tiny", "tiny", max_position_embeddings=2048)


# ---- hostile files ----------------------------------------------------------------------------------

ABSURD = st.one_of(st.integers(-5, 0), st.integers(2**31, 2**64), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=5), st.none(), st.booleans(), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
          "rope_scaling", "tie_word_embeddings", "attention_bias", "eos_token_id", "bos_token_id", "torch_dtype",
          "architectures", "model_type", "rope_parameters", "pretraining_tp"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), ABSURD, min_size=1, max_size=3))
@example(changes={"rms_norm_eps": 2**64})  # once reached the kernel as an int too large for it
@example(changes={"rope_theta": 5.9e-298})  # once gave infinite RoPE frequencies: NaN in attention
def test_fuzzed_config_values(tmp_path_factory, changes):
    dst = tmp_path_factory.mktemp("cfg")
    shutil.copy(FIXTURES / "mha_f32" / "model.safetensors", dst)
    cfg = json.loads((FIXTURES / "mha_f32" / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    crashed = False
    try:
        model = LlamaForCausalLM.from_pretrained(dst)
        model(np.array([[1, 2, 3]]))
    except LlamacpuError:
        pass
    except Exception:
        crashed = True
        raise
    finally:
        fuzz_tally("config.json", crashed)


@FUZZ
@given(data=st.data())
def test_fuzzed_tokenizer_files(tmp_path_factory, shared_models, data):
    src = shared_models / "stories260K"
    dst = tmp_path_factory.mktemp("tok")
    raw = bytearray((src / "tokenizer.model").read_bytes())
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    for _ in range(data.draw(st.integers(0, 6))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    (dst / "tokenizer.model").write_bytes(bytes(raw))
    conf = data.draw(st.sampled_from(["valid", "garbage", "wrong-types"]))
    if conf == "valid":
        shutil.copy(src / "tokenizer_config.json", dst)
    elif conf == "garbage":
        (dst / "tokenizer_config.json").write_bytes(bytes(data.draw(st.binary(max_size=40))))
    else:
        (dst / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": "maybe", "bos_token": 5,
                                                               "model_max_length": -1}))
    crashed = False
    try:
        tok = LlamaTokenizer.from_pretrained(dst)
        ids = tok.encode("Once upon a time")
        tok.decode(ids)
    except LlamacpuError:
        pass
    except Exception:
        crashed = True
        raise
    finally:
        fuzz_tally("tokenizer.model+config", crashed)


@FUZZ
@given(blob=st.binary(max_size=300))
def test_fuzzed_tokenizer_json(tmp_path_factory, blob):
    dst = tmp_path_factory.mktemp("tokjson")
    (dst / "tokenizer.json").write_bytes(blob)
    crashed = False
    try:
        LlamaTokenizerFast.from_pretrained(dst).encode("hi")
    except LlamacpuError:
        pass
    except Exception:
        crashed = True
        raise
    finally:
        fuzz_tally("tokenizer.json", crashed)


@FUZZ
@given(data=st.data())
def test_fuzzed_quantized_checkpoint(tmp_path_factory, data):
    from llamacpu.checkpoint.quantized import quantize_checkpoint
    global _QCKPT
    if "_QCKPT" not in globals():
        _QCKPT = quantize_checkpoint(FIXTURES / "mha_f32", tmp_path_factory.mktemp("qsrc") / "q", "q8_0")
    dst = tmp_path_factory.mktemp("qf")
    shutil.copy(_QCKPT / "config.json", dst)
    raw = bytearray((_QCKPT / "model.safetensors").read_bytes())
    n_header = int.from_bytes(raw[:8], "little") + 8
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    for _ in range(data.draw(st.integers(1, 4))):
        if raw:
            raw[data.draw(st.integers(0, min(len(raw), n_header) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    (dst / "model.safetensors").write_bytes(bytes(raw))
    crashed = False
    try:
        LlamaForCausalLM.from_pretrained(dst, check_finite=False)(np.array([[1, 2]]))
    except LlamacpuError:
        pass
    except Exception:
        crashed = True
        raise
    finally:
        fuzz_tally("quantized checkpoint", crashed)


def test_absurd_context_is_refused_not_allocated(tiny):
    model = LlamaForCausalLM.from_pretrained(tiny, max_context=2**40)
    with pytest.raises(InputError, match="max_context"):
        model(np.array([[1, 2]]))


# ---- concurrency and fork -----------------------------------------------------------------------------

@pytest.mark.skipif(not (sys.platform == "linux" and os.uname().machine == "x86_64"),
                    reason="the tbb wheel exists for Linux x86_64 (and Windows amd64) only")
@pytest.mark.skipif("NUMBA_THREADING_LAYER" in os.environ, reason="NUMBA_THREADING_LAYER overrides the choice")
def test_tbb_threading_layer_is_used(tiny):
    """The package installs tbb here, so the kernels must run on it (workqueue launches cost ~80x more)."""
    from llamacpu.runtime import threading_layer
    LlamaForCausalLM.from_pretrained(tiny)(np.array([[1, 2]]))  # runs parallel kernels
    assert threading_layer() == "tbb"


def test_threads_and_two_models(tiny):
    a = LlamaForCausalLM.from_pretrained(tiny)
    b = LlamaForCausalLM.from_pretrained(FIXTURES / "gqa_f16")
    prompts = [np.array([[1, 2, 3 + i]]) for i in range(4)]
    want_a = [a.generate(p, max_new_tokens=12).tolist() for p in prompts]
    want_b = [b.generate(p, max_new_tokens=12).tolist() for p in prompts]
    got, errors = {}, []

    def work(model, name, i):
        try:
            # each thread generates with its own cache: the model's static cache is per call
            cache = model.new_cache(1)
            ids = prompts[i]
            logits = model.next_token_logits(ids, None, cache)
            out = list(ids[0])
            for _ in range(12):
                nxt = int(logits[0].argmax())
                out.append(nxt)
                logits = model.next_token_logits(np.array([[nxt]]), None, cache)
            got[(name, i)] = [out]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(m, n, i)) for m, n in ((a, "a"), (b, "b")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [got[("a", i)] for i in range(4)] == want_a
    assert [got[("b", i)] for i in range(4)] == want_b


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_use_after_fork(tiny):
    model = LlamaForCausalLM.from_pretrained(tiny)
    want = model.generate(np.array([[1, 2, 3]]), max_new_tokens=8)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent already ran parallel kernels
        try:
            ids = model.generate(np.array([[1, 2, 3]]), max_new_tokens=8)
            os.write(write, json.dumps(ids.tolist()).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    data = os.read(read, 1 << 16)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert json.loads(data) == want.tolist()


# ---- long runs, full cache, interrupts -------------------------------------------------------------------

def test_generate_to_the_full_context_with_flat_memory(tiny):
    model = LlamaForCausalLM.from_pretrained(tiny, max_context=2048)
    model.generate(np.array([[1]]), max_new_tokens=64)  # warm: buffers and cache allocated
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ids = model.generate(np.array([[1]]), max_new_tokens=2048, eos_token_id=[])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert ids.shape == (1, 2049)
    # only the KV cache pages fill in (2 x 2 layers x 2 heads x 2048 x 16 x 4 B = 1 MiB) plus history
    assert (after - before) * 1024 < 64 * 2**20
    with pytest.raises(InputError, match="exceeds the context of 2048"):
        model.generate(np.array([[1]]), max_new_tokens=2049, eos_token_id=[])


def test_interrupt_mid_generation_leaves_the_model_usable(tiny):
    model = LlamaForCausalLM.from_pretrained(tiny)
    want = model.generate(np.array([[1, 2]]), max_new_tokens=20)

    class Interrupt:  # a streamer whose 6th token "receives" Ctrl-C
        count = 0

        def put(self, value):
            self.count += 1
            if self.count == 6:
                raise KeyboardInterrupt

        def end(self):
            pass

    with pytest.raises(KeyboardInterrupt):
        model.generate(np.array([[1, 2]]), max_new_tokens=20, streamer=Interrupt())
    np.testing.assert_array_equal(model.generate(np.array([[1, 2]]), max_new_tokens=20), want)


# ---- determinism ---------------------------------------------------------------------------------------

def test_greedy_and_logits_independent_of_thread_count(tiny):
    code = ("import sys, numpy as np; from llamacpu import LlamaForCausalLM;"
            "m = LlamaForCausalLM.from_pretrained(sys.argv[1]);"
            "ids = m.generate(np.array([[1, 5, 9, 13]]), max_new_tokens=40);"
            "print(ids.tolist(), m(ids[:, :16]).logits.tobytes().hex()[:4000])")
    outs = []
    for n in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=n)
        out = subprocess.run([sys.executable, "-c", code, str(tiny)], capture_output=True, text=True, env=env,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        outs.append(out.stdout)
    assert outs[0] == outs[1]  # bit-identical: rows are split across threads, never a dot product
