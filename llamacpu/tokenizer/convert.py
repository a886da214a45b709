"""A SentencePiece tokenizer.model -> a `tokenizers.Tokenizer`, as transformers 5 converts one when a
folder has no tokenizer.json (LlamaTokenizerFast.from_pretrained on tokenizer.model only):

    model          BPE over the SentencePiece pieces (id order), byte_fallback, fuse_unk; merges are
                   every split of a piece into two pieces, ranked by the merged piece's id
                   (transformers' generate_merges)
    pre-tokenizer  Metaspace("▁", prepend_scheme="first", split=False): one "▁" before the text,
                   spaces become "▁" (transformers 5's LlamaTokenizer, legacy=False)
    decoder        "▁" -> " ", byte-fallback pieces -> UTF-8, strip the one leading space
    special        control pieces (<s>, </s>) and <unk> are special added tokens (user-defined
                   pieces, which Llama models do not have, stay ordinary BPE pieces)

sentencepiece (a dependency already) reads the model; no protobuf package is needed.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TokenizerError
from ..limits import read_bytes


def generate_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary: (left, right) for every piece = left + right with both
    halves in the vocabulary, ordered by the piece's id, then by the halves' lengths and ids."""
    merges = []
    for piece, rank in vocab.items():
        local = [(piece[:i], piece[i:], rank) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])))  # stable: ties keep the order above
    return [(a, b) for a, b, _ in merges]


def tokenizer_from_sentencepiece(model_file: str | Path):
    """-> (tokenizers.Tokenizer, {"unk_token", "bos_token", "eos_token"}) for a tokenizer.model."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(read_bytes(model_file, TokenizerError, "SentencePiece model", 1 << 30))
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"{model_file}: not a readable SentencePiece model ({e})") from None
    n = sp.get_piece_size()
    try:
        vocab = {sp.id_to_piece(i): i for i in range(n)}
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{model_file}: a piece is not UTF-8 ({e})") from None
    tok = Tokenizer(BPE(vocab=vocab, merges=generate_merges(vocab), fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    special = [AddedToken(sp.id_to_piece(i), special=True, normalized=False)
               for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens(special)

    def piece(i):
        return sp.id_to_piece(i) if 0 <= i < n else None

    names = {"unk_token": piece(sp.unk_id()), "bos_token": piece(sp.bos_id()), "eos_token": piece(sp.eos_id())}
    return tok, names
