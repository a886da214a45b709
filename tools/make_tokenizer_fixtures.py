"""Write tests/fixtures/tokenizer/llama2_ids.json from transformers' slow (SentencePiece) LlamaTokenizer.

The fixture is the reference that llamacpu.tokenizer.LlamaTokenizer is tested against: ids with and
without special tokens, decodes, and the special-token API, for the real Llama 2 tokenizer (legacy=True,
its default, and legacy=False) and for stories260K with its tokenizer_config.json.

transformers stays out of the project's venv. Run it from a separate one:

    python3 -m venv /work/tokfixenv
    /work/tokfixenv/bin/pip install "transformers<5" sentencepiece protobuf
    /work/tokfixenv/bin/python tools/make_tokenizer_fixtures.py [--models ../shared/models]

transformers 5 removed the slow SentencePiece LlamaTokenizer (LlamaTokenizer is the `tokenizers` one
there), hence the pin; protobuf is needed by legacy=False, which edits the model's normalizer spec.
"""

import argparse
import json
import tempfile
from pathlib import Path

import transformers
from transformers import LlamaTokenizer

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "tokenizer" / "llama2_ids.json"

TEXTS = [
    "Hello world",
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "café naïve résumé Ångström",
    "你好，世界",
    "日本語のテキストです。カタカナとひらがな",
    "Привет, мир! Ελληνικά",
    "안녕하세요 مرحبا नमस्ते",
    "emoji 😀 and 👍🏽",
    "family 👨‍👩‍👧‍👦 flags 🇯🇵🇫🇷 rainbow 🏳️‍🌈",
    "12345 3.14159 1,000,000",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "multiple   inner    spaces",
    "tab\tseparated\tvalues",
    "line one\nline two",
    "\n\n",
    "paragraph\n\nnext paragraph\r\n",
    "",
    "   ",
    " ",
    "<s>",
    "Hello <s>.",
    "<s>Hello",
    "a</s>b<s>",
    "text with <unk> inside",
    "mixed: English, 中文, العربية, and emoji 🎉!",
    "def add(a, b):\n    return a + b  # sum\n",
    'for (int i = 0; i < n; ++i) { printf("%d\\n", i); }',
    "ﬁ ligature, ＡＢＣ fullwidth, ①②③",
    "e\u0301 combining accent",
    "zero\u200bwidth",
    "▁already▁has▁metaspace",
    "replacement \ufffd char",
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
]

# Id lists to decode directly: special tokens mid-sequence, a lone space piece, the legacy=False
# "Hello" piece without the dummy prefix, and byte-fallback pieces of "你" (E4 BD A0) split apart.
DECODE_IDS = [
    [15043, 1, 3186],
    [15043, 1, 1, 3186, 2],
    [29871],
    [29871, 15043],
    [1, 10994],
    [231, 192],
    [231, 192, 163, 15043],
    [0, 15043, 0],
]


def load(path, **kwargs):
    transformers.logging.set_verbosity_error()  # the "default legacy behaviour" notice
    return LlamaTokenizer.from_pretrained(str(path), **kwargs)


def api(tok):
    """The special-token API on a few fixed inputs."""
    a, b = [5, 6, 7], [8, 9]
    return {
        "vocab_size": tok.vocab_size,
        "len": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "unk_token_id": tok.unk_token_id,
        "pad_token_id": tok.pad_token_id,
        "all_special_ids": tok.all_special_ids,
        "all_special_tokens": tok.all_special_tokens,
        "build_inputs": tok.build_inputs_with_special_tokens(a),
        "build_inputs_pair": tok.build_inputs_with_special_tokens(a, b),
        "special_tokens_mask": tok.get_special_tokens_mask(a),
        "special_tokens_mask_pair": tok.get_special_tokens_mask(a, b),
        "special_tokens_mask_already": tok.get_special_tokens_mask([1, 5, 2, 0, 6], already_has_special_tokens=True),
        "token_type_ids": tok.create_token_type_ids_from_sequences(a),
        "token_type_ids_pair": tok.create_token_type_ids_from_sequences(a, b),
        "model_max_length": tok.model_max_length if tok.model_max_length < 2**62 else None,
    }


def texts(tok, items):
    out = []
    for text in items:
        with_special = tok.encode(text)
        plain = tok.encode(text, add_special_tokens=False)
        out.append({
            "text": text,
            "ids": with_special,
            "ids_no_special": plain,
            "tokens": tok.tokenize(text),
            "decode": tok.decode(with_special),
            "decode_skip_special": tok.decode(with_special, skip_special_tokens=True),
            "roundtrip": tok.decode(plain, skip_special_tokens=True) == text,
        })
    return out


def decodes(tok, id_lists):
    return [{"ids": ids, "decode": tok.decode(ids), "decode_skip_special": tok.decode(ids, skip_special_tokens=True)}
            for ids in id_lists if max(ids) < len(tok)]


def added_tokens(tok):
    """Pad-token and added-token behaviour, then padding and truncation in __call__."""
    n_pad = tok.add_special_tokens({"pad_token": "<pad>"})
    n_added = tok.add_tokens(["FOO", "bar baz"])
    sample = ["Hello FOO world", "xFOOy", "a <pad> b", "bar baz!", "FOO", "FOO FOO"]
    batch = ["Hello world", "Hi", "A longer sentence with more tokens"]
    result = {
        "pad_added": n_pad,
        "tokens_added": n_added,
        "api": api(tok),
        "texts": texts(tok, sample),
        "decodes": decodes(tok, [[15043, len(tok) - 2, 29871], [len(tok) - 2, 29871, len(tok) - 2],
                                 [len(tok) - 2, 29871, 29871, len(tok) - 2], [15043, len(tok) - 3, 1, 3186]]),
        "batch": batch,
        "pad_right": tok(batch, padding=True).data,
        "pad_max_length": tok(batch, padding="max_length", max_length=12).data,
        "truncate": tok(batch, truncation=True, max_length=4).data,
    }
    tok.padding_side = "left"
    result["pad_left"] = tok(batch, padding=True).data
    result["pad_left_truncate"] = tok(batch, padding="max_length", truncation=True, max_length=5).data
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=REPO.parent / "shared" / "models",
                        help="the shared model folder (default: ../shared/models beside the repo)")
    args = parser.parse_args()
    if int(transformers.__version__.split(".")[0]) >= 5:
        raise SystemExit(f"transformers {transformers.__version__} has no slow LlamaTokenizer: install transformers<5")

    llama2 = args.models / "llama2-tokenizer"
    stories = args.models / "stories260K"
    fixture = {"transformers_version": transformers.__version__, "tokenizers": {}}
    for name, folder, kwargs in [("llama2", llama2, {}), ("llama2_legacy_false", llama2, {"legacy": False}),
                                 ("stories260K", stories, {})]:
        tok = load(folder, **kwargs)
        entry = {
            "folder": folder.name,
            "kwargs": kwargs,
            "legacy": tok.legacy,
            "api": api(tok),
            "texts": texts(tok, TEXTS),
            "decodes": decodes(tok, DECODE_IDS),
        }
        if name != "stories260K":
            entry["added_tokens"] = added_tokens(load(folder, **kwargs))
        fixture["tokenizers"][name] = entry

    # save_pretrained output of a tokenizer with a pad token, to check the files we write are readable.
    tok = load(llama2)
    tok.add_special_tokens({"pad_token": "<pad>"})
    with tempfile.TemporaryDirectory() as tmp:
        names = sorted(Path(p).name for p in tok.save_pretrained(tmp))
        config = json.loads((Path(tmp) / "tokenizer_config.json").read_text())
    fixture["save_pretrained"] = {"files": names, "tokenizer_config": config}

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)} (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
