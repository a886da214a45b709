"""Structured output: the allowed-token mask of a JSON schema, a regex or a Lark grammar, per step.

We use llguidance (the constrained-decoding library llama.cpp and vLLM use) rather than outlines-core:
llguidance builds its token trie from the vocabulary once (about a second) and computes each step's
mask lazily from the grammar's current lexer state, with no per-schema index to build, so a new schema
costs milliseconds where outlines-core compiles a full regex-to-token automaton (seconds for
non-trivial schemas). The per-token mask cost is measured in bench/serving.py (bench/README.md).
Used by the serving engine (response_format, per request) and by model.generate(json_schema=...,
regex=..., grammar=...) (one grammar state per row).

    lt = cached_ll_tokenizer(tokenizer, vocab_size)       # once per tokenizer (built once, then cached)
    c = Constraint(lt, json_schema={"type": "object", ...})   # per request
    c.allowed(vocab)  -> bool [vocab];  c.advance(token);  c.done()
    tok = sample_allowed(c, logits_row, draw)             # one constrained pick (engine and model.generate)
"""
from __future__ import annotations

import json
import threading
import weakref

import numpy as np

from ..errors import InputError, UnsupportedError


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise UnsupportedError("structured output needs llguidance: pip install 'llamacpu[server]'") from None
    return llguidance


class _SentencePieceVocab:
    """What llguidance's TokenizerWrapper reads from a tokenizer: each id's bytes, eos/bos, special ids,
    and an encode function. SentencePiece pieces spell a space as U+2581 and bytes as <0xNN>."""

    def __init__(self, tokenizer, vocab_size: int):
        sp = tokenizer.sp_model
        special = set(tokenizer.all_special_ids)
        self.tokens, self.special_token_ids = [], []
        for i in range(vocab_size):
            if i >= sp.get_piece_size():
                self.tokens.append(b"")
                self.special_token_ids.append(i)
                continue
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                self.tokens.append(bytes([int(piece[3:5], 16)]))
            elif sp.is_control(i) or sp.is_unknown(i) or i in special:
                self.tokens.append(piece.encode())
                self.special_token_ids.append(i)
            else:
                self.tokens.append(piece.replace("\u2581", " ").encode())
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self._tokenizer = tokenizer

    def __call__(self, text):
        """ids of `text` without SentencePiece's dummy-prefix space (llguidance tokenizes pieces of text
        mid-sequence): encode it after a newline byte, which merges with nothing, and drop up to that."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        sp = self._tokenizer.sp_model
        ids = sp.encode("\n" + text)
        nl = sp.piece_to_id("<0x0A>")
        return ids[ids.index(nl) + 1:] if nl in ids else ids


def ll_tokenizer(tokenizer, vocab_size: int, eos_ids=None):
    """An llguidance LLTokenizer for one of our tokenizers (expensive: build it once per tokenizer)."""
    llg = _llguidance()
    eos = list(eos_ids or []) or [tokenizer.eos_token_id]
    if hasattr(tokenizer, "backend_tokenizer"):  # the tokenizers library: llguidance reads its JSON
        from copy import copy

        backend = copy(tokenizer.backend_tokenizer)
        backend.no_padding()
        backend.no_truncation()
        return llg.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=eos)
    if hasattr(tokenizer, "sp_model"):
        return llg.LLTokenizer(llg.TokenizerWrapper(_SentencePieceVocab(tokenizer, vocab_size)),
                               n_vocab=vocab_size, eos_token=eos)
    raise UnsupportedError(f"structured output: no llguidance vocabulary for {type(tokenizer).__name__}")


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def cached_ll_tokenizer(tokenizer, vocab_size: int, eos_ids=None):
    """ll_tokenizer(...) built once per tokenizer object (and vocabulary size, EOS ids): model.generate
    calls it on every constrained call, and the build takes seconds for a 50k vocabulary."""
    key = (int(vocab_size), tuple(eos_ids or ()))
    with _CACHE_LOCK:
        try:
            per_tok = _CACHE.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable: build every time
            per_tok = {}
        if key not in per_tok:
            per_tok[key] = ll_tokenizer(tokenizer, vocab_size, eos_ids)
        return per_tok[key]


class Constraint:
    """One request's grammar state. Exactly one of json_schema (a dict; {} or True = any JSON object),
    regex, lark."""

    def __init__(self, ll_tok, json_schema=None, regex: str | None = None, lark: str | None = None):
        llg = _llguidance()
        if sum(x is not None for x in (json_schema, regex, lark)) != 1:
            raise InputError("structured output: give exactly one of json_schema, regex, lark")
        try:
            if json_schema is not None:
                if json_schema is True or json_schema == {}:
                    json_schema = {"type": "object"}
                if not isinstance(json_schema, dict):
                    raise InputError("json_schema: expected a JSON Schema object")
                grammar = llg.LLMatcher.grammar_from_json_schema(json.dumps(json_schema),
                                                                 defaults={"whitespace_flexible": False})
            elif regex is not None:
                grammar = llg.LLMatcher.grammar_from_regex(str(regex))
            else:
                grammar = llg.LLMatcher.grammar_from_lark(str(lark))
        except (ValueError, TypeError) as e:
            raise InputError(f"structured output: {e}") from None
        self.matcher = llg.LLMatcher(ll_tok, grammar, log_level=0)
        if self.matcher.is_error():
            raise InputError(f"structured output: {self.matcher.get_error()}")
        self.vocab = ll_tok.vocab_size

    def allowed(self, vocab: int) -> np.ndarray:
        """bool [vocab]: the tokens the grammar accepts next (EOS once the text is complete)."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), np.uint8)
        mask = np.unpackbits(bits, bitorder="little")[:vocab].astype(bool)
        if len(mask) < vocab:
            mask = np.concatenate([mask, np.zeros(vocab - len(mask), bool)])
        if not mask.any():  # an error state: let the engine stop on EOS rather than sample from nothing
            raise InputError(f"structured output: the grammar allows no token ({self.matcher.get_error()})")
        return mask

    def accepts(self, token: int) -> bool:
        """Whether the grammar takes `token` now. The mask can be wider than this after bytes the grammar
        forces (seen with a forced space before a digit under a SentencePiece vocabulary), so the engine
        checks the sampled token and draws again without it when it is refused."""
        return self.matcher.validate_tokens([int(token)]) == 1

    def allowed_exact(self, vocab: int) -> np.ndarray:
        """bool [vocab] by asking the grammar about every token: slow (a few us a token), used only when
        `allowed` admitted nothing the grammar takes (a forced space under SentencePiece, where
        llguidance's mask leaves out the lone space piece)."""
        return np.array([self.accepts(t) for t in range(vocab)], bool)

    def advance(self, token: int) -> None:
        self.matcher.consume_token(int(token))

    def done(self) -> bool:
        return self.matcher.is_stopped()


def sample_allowed(constraint: Constraint, logits: np.ndarray, draw) -> int:
    """The next token of one sequence under `constraint`. logits: float [vocab]; draw(z) samples one id
    from float32 z [1, vocab] (the request's sampler, so greedy stays greedy and a seed stays
    reproducible). A drawn token the grammar refuses (see Constraint.accepts) is masked and drawn again;
    after 16 refusals, or when the mask admits nothing the grammar takes, the exact mask decides."""
    vocab = len(logits)
    z = logits[None].astype(np.float32)
    z[0, ~constraint.allowed(vocab)] = -np.inf
    for _ in range(16):
        tok = int(draw(z.copy()))
        if constraint.accepts(tok):
            return tok
        z[0, tok] = -np.inf
        if not np.isfinite(z).any():
            break
    z = logits[None].astype(np.float32)
    z[0, ~constraint.allowed_exact(vocab)] = -np.inf
    if not np.isfinite(z).any():
        raise InputError("structured output: no token satisfies the grammar here")
    return int(draw(z))
