"""Token labels a student can read.

Vocabularies store pieces in an encoding of their own: byte-level BPE (GPT-2, Llama 3, SmolLM) maps
every byte to a printable character (`Ġ` = space, `Ċ` = newline, `Ã©` = the two bytes of "é"), and
SentencePiece writes a space as `▁` and a byte-fallback piece as `<0x0A>`. `token_labels` turns each
piece back into the bytes it stands for and shows them as text, keeping the raw piece and the id for a
tooltip. A piece that is only part of a UTF-8 character shows its bytes (`\\xe2`).
"""
from __future__ import annotations

import re

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}  # whitespace that would otherwise vanish in a label


def _byte_level_decoder() -> dict:
    """GPT-2's bytes_to_unicode, inverted: printable character -> the byte it stands for."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


BYTE_LEVEL = _byte_level_decoder()


def is_byte_level(tokenizer) -> bool:
    """True for a `tokenizers` tokenizer whose decoder is (or contains) ByteLevel."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return False
    state = decoder.__getstate__()
    return b'"ByteLevel"' in (state if isinstance(state, bytes) else str(state).encode())


def piece_bytes(piece: str, byte_level: bool) -> bytes:
    """The bytes a vocabulary piece stands for."""
    if byte_level:
        if all(c in BYTE_LEVEL for c in piece):
            return bytes(BYTE_LEVEL[c] for c in piece)
        return piece.encode("utf-8")  # an added token written as plain text
    m = _BYTE_PIECE.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def readable(data: bytes) -> str:
    """Bytes as text: invalid UTF-8 as \\xNN escapes, newlines and tabs as visible marks, and a token
    of spaces only as ␣ marks (it would otherwise look empty)."""
    text = data.decode("utf-8", errors="backslashreplace")
    if text and text.strip(" ") == "":
        return "␣" * len(text)
    return "".join(VISIBLE.get(c, c) for c in text)


def token_labels(tokenizer, ids) -> list:
    """[{"id", "piece", "text", "special"}, ...] for token ids; "text" is what a reader should see
    (special tokens such as `<s>` stay as written). Without a tokenizer the text is `#id`."""
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return [{"id": i, "piece": f"#{i}", "text": f"#{i}", "special": False} for i in ids]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    byte_level = is_byte_level(tokenizer)
    out = []
    for i, piece in zip(ids, pieces):
        piece = "" if piece is None else str(piece)
        text = piece if i in special else readable(piece_bytes(piece, byte_level))
        out.append({"id": i, "piece": piece, "text": text, "special": i in special})
    return out
