"""Incremental decoding: turn generated ids into text as they arrive, for streaming output.

Decoding one token at a time does not work for SentencePiece: a character may be split over several
byte-fallback pieces (<0xE4><0xBD><0xA0> is "你"), and the leading space of a piece depends on where it
stands (decode drops the dummy-prefix space of the first piece only). So, as text-generation-inference
does, we decode a short window of recent ids twice, without and with the new ones, and emit the
difference, but only once it does not end in U+FFFD (an incomplete UTF-8 sequence).

The window starts one emission back (TGI's prefix_offset), so each decode costs O(window), not
O(all ids). It moves forward only when the window's own decode agrees with the text already produced,
which keeps the start-of-text rules (stripped space, spaces joining added tokens) inside its first
tokens, where they cancel out in the difference.
"""

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Feed ids with `push(id)`, get back only the newly completed text; `flush()` at the end.

    Concatenating every push and the flush equals `tokenizer.decode(all_ids, skip_special_tokens)`.
    One exception, with skip_special_tokens=False and legacy=True: transformers' decode puts a space
    *before* a run of text that a special token follows ("Hello</s>" decodes as " Hello</s>"), which no
    stream can know in advance; here that space comes just before the special token instead.
    Decoding uses clean_up_tokenization_spaces=False (the Llama default).
    """

    def __init__(self, tokenizer, skip_special_tokens=True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._special = set(tokenizer.all_special_ids)
        self._window = []  # the recent ids; the text of those before them has been emitted
        self._read = 0  # window[:read] is emitted
        self._prefix_text = ""  # decode(window[:read])

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def push(self, token_id):
        """Add one id; return the text it completes ("" while a character or word is incomplete)."""
        token_id = int(token_id)
        self.tokenizer.convert_ids_to_tokens(token_id)  # raises InputError before the state changes
        if self.skip_special_tokens and token_id in self._special:
            return ""  # decode drops them before anything else
        self._window.append(token_id)
        text = self._decode(self._window)
        if not text.startswith(self._prefix_text):
            return self._legacy_special()
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT_CHAR):
            return ""
        new = text[len(self._prefix_text):]
        # Move the window to start at the first id not emitted before this push, if decoding from there
        # gives non-empty text that ends what we have (so the start-of-text rules fall inside it). Never
        # start at a kept special token: decode treats one in first position differently.
        tail = self._window[self._read:]
        tail_text = self._decode(tail)
        if tail_text and text.endswith(tail_text) and (self.skip_special_tokens or tail[0] not in self._special):
            self._window, self._prefix_text = tail, tail_text
        else:
            self._prefix_text = text
        self._read = len(self._window)
        return new

    def _legacy_special(self):
        """The one place decode is not prefix-stable: with legacy=True, a special token after a text
        piece makes transformers put a space in front of that text. Emit the pending text, then the
        space and the special token."""
        before = self._decode(self._window[:-1])
        pending = before[len(self._prefix_text):]
        special = self.tokenizer.convert_ids_to_tokens(self._window[-1])
        # Keep the piece before the special token in the window, so that decode sees the special token
        # in the same (non-first) position as in the full sequence.
        self._window = self._window[-2:]
        self._prefix_text = self._decode(self._window)
        self._read = len(self._window)
        return pending + " " + special

    def flush(self):
        """Return the text still held back (an incomplete character decodes as U+FFFD, as in decode)."""
        text = self._decode(self._window)
        new = text[len(self._prefix_text):] if text.startswith(self._prefix_text) else ""
        self._prefix_text, self._read = text, len(self._window)
        return new


def decode_stream(tokenizer, token_ids, skip_special_tokens=True):
    """Yield the text pieces of `token_ids` (any iterable, e.g. a generator of sampled ids) as they
    complete."""
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens)
    for token_id in token_ids:
        if text := decoder.push(token_id):
            yield text
    if text := decoder.flush():
        yield text


__all__ = ["IncrementalDecoder", "decode_stream"]
