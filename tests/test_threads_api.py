"""The public Python API shared by several threads on one model: every call gives what it gives alone.

Each call without its own cache gets one lent by the model (`take_cache`), and each forward chunk its
own workspace, so nothing one thread writes is read by another. Several rounds with different prompts
per thread make interleavings likely (steps interleave token by token under the kernel lock).
"""
import threading

import numpy as np
import pytest

import llamacpu
from llamacpu import AutoTokenizer, LlamaForCausalLM, pipeline
from llamacpu.generation.chat import ChatSession

PROMPTS = ["Once upon a time", "The cat sat", "Lily and Tom went to", "A big red ball", "One day, a bird",
           "The sun was hot and", "Tim had a toy", "She looked at the sky"]
THREADS = 4
N_NEW = 24


@pytest.fixture(scope="module")
def stories(shared_models):
    path = shared_models / "stories260K"
    return LlamaForCausalLM.from_pretrained(path, max_context=256), AutoTokenizer.from_pretrained(path)


def in_threads(fn, jobs):
    """Run fn(job) for every job on THREADS threads at once; -> results in job order."""
    results, errors = [None] * len(jobs), []
    barrier = threading.Barrier(THREADS)

    def worker(k):
        barrier.wait()
        for i in range(k, len(jobs), THREADS):
            try:
                results[i] = fn(jobs[i])
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_generate_from_threads_equals_sequential(stories):
    model, tok = stories
    jobs = PROMPTS * 2

    def run(prompt):
        return model.generate(np.array([tok.encode(prompt)]), max_new_tokens=N_NEW).tolist()

    want = [run(p) for p in jobs]
    assert in_threads(run, jobs) == want
    assert len({str(w) for w in want}) == len(PROMPTS)  # the prompts really differ


def test_seeded_sampling_and_batches_from_threads(stories):
    model, tok = stories
    batch = [tok.encode(p) for p in PROMPTS[:2]]
    width = max(map(len, batch))
    ids = np.array([[0] * (width - len(b)) + b for b in batch])
    mask = np.array([[0] * (width - len(b)) + [1] * len(b) for b in batch])
    jobs = list(range(8))

    def run(seed):
        if seed % 2:
            return model.generate(ids, attention_mask=mask, max_new_tokens=N_NEW).tolist()
        return model.generate(np.array([tok.encode(PROMPTS[seed])]), max_new_tokens=N_NEW, do_sample=True,
                              temperature=0.9, seed=seed).tolist()

    want = [run(s) for s in jobs]
    assert in_threads(run, jobs) == want


def test_forward_logits_from_threads_equal_sequential(stories):
    model, tok = stories
    jobs = PROMPTS

    def run(prompt):
        out = model(np.array([tok.encode(prompt)]))
        return out.logits, out.past_key_values

    want = [run(p)[0] for p in jobs]
    got = in_threads(run, jobs)
    for w, (g, cache) in zip(want, got):
        np.testing.assert_array_equal(g, w)
    assert len({id(cache) for _, cache in got}) == len(jobs)  # each call's past_key_values is its own


def test_stream_and_pipeline_from_threads_equal_sequential(stories):
    model, tok = stories
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    jobs = [(kind, p) for p in PROMPTS for kind in ("stream", "pipeline")]

    def run(job):
        kind, prompt = job
        if kind == "stream":
            return "".join(llamacpu.stream(model, tok, prompt, max_new_tokens=N_NEW))
        return pipe(prompt, max_new_tokens=N_NEW, stop_strings=["."], do_sample=False)[0]["generated_text"]  # greedy: the pipeline samples by default

    want = [run(j) for j in jobs]
    assert in_threads(run, jobs) == want
    assert all(w.endswith(".") for (kind, _), w in zip(jobs, want) if kind == "pipeline" and "." in w)


def test_chat_sessions_from_threads_equal_sequential(stories):
    """One ChatSession per conversation (a session is one conversation; do not share one between threads),
    many sessions on one model at once, two turns each."""
    model, tok = stories
    jobs = PROMPTS[:4]

    def run(prompt):
        chat = ChatSession(model, tok, max_new_tokens=12)
        return ["".join(chat.send(prompt)), "".join(chat.send("And then?"))]

    want = [run(p) for p in jobs]
    assert in_threads(run, jobs) == want


def test_lent_caches_are_reused_and_bounded(stories):
    """A single caller gets the same cache back (no allocation per call); concurrent ones get their own."""
    model, tok = stories
    ids = np.array([tok.encode("Once upon a time")])
    model.generate(ids, max_new_tokens=2)
    first = model.take_cache(1)
    model.give_back_cache(first)
    model.generate(ids, max_new_tokens=2)
    again = model.take_cache(1)
    assert again is first
    others = [model.take_cache(1) for _ in range(model.max_free_caches + 2)]
    assert all(o is not again for o in others)
    for c in [again] + others:
        model.give_back_cache(c)
    assert len(model._free_caches) == model.max_free_caches
