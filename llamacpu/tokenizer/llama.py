"""Llama's SentencePiece tokenizer, behaving like transformers' slow `LlamaTokenizer` (transformers 4.x).

The SentencePiece library does the BPE; this module adds what transformers layers on top, with the same
public names and the same ids: special and added tokens (the text is split on them first, each piece is
encoded on its own), BOS/EOS insertion, padding and truncation in `__call__`, and decoding.

Two transformers behaviours shape the ids and text, both reproduced on purpose:

- Dummy prefix. SentencePiece encodes "Hello" as "▁Hello" (15043), prepending "▁" to every piece of text
  it is given. Decoding strips that one leading space again: transformers drops the "▁" of the first
  token, and then sentencepiece's own decode drops the "▁" of the first non-empty piece of every run it
  decodes, so with legacy=True "  Hello" decodes as " Hello" (transformers' behaviour, kept).
- `legacy` (default True, as Llama 2 ships). With legacy=True, text after a special token gets its own
  dummy prefix: "Hello <s>." -> [15043, 29871, 1, 869] ("▁."). With legacy=False [transformers PR #24565]
  the model is loaded with add_dummy_prefix off and "▁" is added once, at the start of the whole text, so
  the same text gives [..., 1, 29889] ("."); decode then keeps leading spaces.
"""

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llamacpu.errors import InputError, TokenizerError, UnsupportedError
from llamacpu.limits import is_present, read_bytes, read_text
from llamacpu.validation import token_ids
from llamacpu.tokenizer.chat import apply_chat_template

SPIECE_UNDERLINE = "▁"
VOCAB_FILE = "tokenizer.model"
VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")  # transformers' order

# `normalizer_spec { add_dummy_prefix: false }` as protobuf wire bytes: field 3 (length 2) holding field 3
# (varint 0). Appended to a serialized ModelProto it merges into the existing normalizer spec, as
# transformers' ModelProto.MergeFrom does, without needing the protobuf package.
_NO_DUMMY_PREFIX = b"\x1a\x02\x18\x00"


@dataclass
class AddedToken:
    """A token matched verbatim in text before SentencePiece runs (transformers' AddedToken fields)."""

    content: str
    special: bool = False
    lstrip: bool = False  # eat the whitespace on its left
    rstrip: bool = False  # eat the whitespace on its right
    single_word: bool = False  # stored for round-trips; not applied
    normalized: bool = True

    def __str__(self):
        return self.content


class BatchEncoding(dict):
    """The dict `__call__` returns (input_ids, attention_mask), with attribute access like transformers'."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device=None, *args, **kwargs) -> "BatchEncoding":
        """transformers moves its tensors to `device`; NumPy arrays live in host memory, where llamacpu
        reads them on every backend, so this returns the encoding unchanged (`.to(model.device)` works)."""
        return self

    @property
    def data(self):
        return dict(self)


def _content(token):
    """A special token given as a string, an AddedToken, or a tokenizer_config.json dict -> its text."""
    if token is None or isinstance(token, str):
        return token
    if isinstance(token, AddedToken):
        return token.content
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    raise TokenizerError(f"a special token must be a string or {{'content': ...}}, got {token!r}")


def _added_token(value):
    if isinstance(value, AddedToken):
        return value
    if isinstance(value, str):
        return AddedToken(value)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        fields = AddedToken.__dataclass_fields__
        return AddedToken(**{k: v for k, v in value.items() if k in fields})
    raise TokenizerError(f"an added token must be a string or {{'content': ...}}, got {value!r}")


def _special_token_property(name):
    def get(self):
        return self._special_tokens.get(name)

    def set(self, value):
        self._special_tokens[name] = _content(value)

    return property(get, set, doc=f"The {name.replace('_', ' ')} as text (None when the model has none).")


def _special_id_property(name):
    def get(self):
        token = self._special_tokens.get(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    def set(self, value):
        self._special_tokens[name] = None if value is None else self.convert_ids_to_tokens(int(value))

    return property(get, set, doc=f"The id of {name} (None when the model has none).")


def _token_index(value, where: str) -> int:
    """A token id from a JSON file: an integer, or a string of one (JSON object keys are strings)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 31:
        raise TokenizerError(f"{where}: token id {value!r:.40} is not an integer in [0, 2**31)")
    return value


def _max_length(value) -> int:
    """model_max_length: an integer; transformers writes 1e30 (a float) for "no limit"."""
    if value is None or (isinstance(value, float) and value >= 1e12):
        return VERY_LARGE_INTEGER
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TokenizerError(f"model_max_length: expected a positive integer, found {value!r:.40}")
    return value


def _read_json(path):
    from ..limits import read_json

    return read_json(path, TokenizerError, path.name)


class LlamaTokenizer:
    """SentencePiece Llama tokenizer with transformers' slow LlamaTokenizer API and ids.

    Build it with `LlamaTokenizer.from_pretrained(folder)`, `LlamaTokenizer(vocab_file, **config)`, or
    `LlamaTokenizer(model_proto=bytes, **config)` for a serialized SentencePiece model (as converted from
    GGUF). Unknown keyword arguments (other tokenizer_config.json keys) are kept for save_pretrained.
    """

    model_input_names = ["input_ids", "attention_mask"]

    bos_token = _special_token_property("bos_token")
    eos_token = _special_token_property("eos_token")
    unk_token = _special_token_property("unk_token")
    pad_token = _special_token_property("pad_token")
    bos_token_id = _special_id_property("bos_token")
    eos_token_id = _special_id_property("eos_token")
    unk_token_id = _special_id_property("unk_token")
    pad_token_id = _special_id_property("pad_token")

    def __init__(self, vocab_file=None, *, model_proto=None, unk_token="<unk>", bos_token="<s>",
                 eos_token="</s>", pad_token=None, additional_special_tokens=None, add_bos_token=True,
                 add_eos_token=False, legacy=None, add_prefix_space=True, model_max_length=VERY_LARGE_INTEGER,
                 padding_side="left", clean_up_tokenization_spaces=False, chat_template=None,
                 added_tokens_decoder=None, **kwargs):
        if (vocab_file is None) == (model_proto is None):
            raise InputError("LlamaTokenizer needs exactly one of vocab_file and model_proto")
        if vocab_file is not None:
            model_proto = read_bytes(vocab_file, TokenizerError, "SentencePiece model", 1 << 30)
        self.vocab_file = None if vocab_file is None else str(vocab_file)
        self.legacy = True if legacy is None else bool(legacy)  # transformers' default (it warns)
        self.add_prefix_space = add_prefix_space
        self._model_proto = bytes(model_proto)  # as given, for save_vocabulary
        self.sp_model = self._load_sp(self._model_proto if self.legacy else self._model_proto + _NO_DUMMY_PREFIX)

        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.model_max_length = _max_length(model_max_length)
        self.padding_side = padding_side
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.chat_template = chat_template
        self.init_kwargs = kwargs  # other tokenizer_config.json keys, written back by save_pretrained

        self._special_tokens = {}
        for name, token in zip(SPECIAL_TOKEN_NAMES, (bos_token, eos_token, unk_token, pad_token)):
            self._special_tokens[name] = _content(token)
        self.additional_special_tokens = [_content(t) for t in additional_special_tokens or []]

        # id -> AddedToken and its inverse. Special tokens already in the SentencePiece vocabulary (<s>)
        # are registered under their own id; new ones get the next free id, as in transformers.
        self._added_tokens_decoder = {}
        for index, token in (added_tokens_decoder or {}).items():
            self._added_tokens_decoder[_token_index(index, "added_tokens_decoder")] = _added_token(token)
        self._added_tokens_encoder = {t.content: i for i, t in self._added_tokens_decoder.items()}
        self._add_tokens([t for t in self.all_special_tokens if t not in self._added_tokens_encoder],
                         special_tokens=True)
        # transformers strips the unk text's pieces back off in legacy=False encoding (see _tokenize).
        self._unk_token_length = len(self.sp_model.encode(str(self.unk_token)))

    @staticmethod
    def _load_sp(proto):
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto)
            # a corrupt model can parse yet hold pieces that are not UTF-8: find them now, not mid-decode
            for i in range(sp.get_piece_size()):
                sp.id_to_piece(i)
        except (RuntimeError, UnicodeDecodeError) as e:  # parse failures; their messages may not be UTF-8
            raise TokenizerError(f"not a valid SentencePiece model ({len(proto)} bytes): {e}") from None
        return sp

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Load a Hugging Face tokenizer folder: tokenizer.model plus the optional tokenizer_config.json,
        special_tokens_map.json, added_tokens.json and chat_template.jinja. Keyword arguments override
        the files."""
        folder = Path(path)
        vocab_file = folder if folder.is_file() else folder / VOCAB_FILE
        if folder.is_file():
            folder = folder.parent
        if not is_present(vocab_file, TokenizerError, VOCAB_FILE):
            raise TokenizerError(f"{vocab_file} not found: a Llama tokenizer folder needs a SentencePiece "
                                 f"{VOCAB_FILE}")
        config = {}
        if is_present(folder / "tokenizer_config.json", TokenizerError, "tokenizer_config.json"):
            config = _read_json(folder / "tokenizer_config.json")
        if is_present(folder / "special_tokens_map.json", TokenizerError, "special_tokens_map.json"):
            config.update(_read_json(folder / "special_tokens_map.json"))  # transformers lets it override
        listed = config.pop("added_tokens_decoder", None) or {}
        if not isinstance(listed, dict):
            raise TokenizerError(f"{folder / 'tokenizer_config.json'}: added_tokens_decoder is "
                                 f"{type(listed).__name__}, expected an object {{id: token}}")
        decoder = {_token_index(i, "tokenizer_config.json added_tokens_decoder"): _added_token(t)
                   for i, t in listed.items()}
        if is_present(folder / "added_tokens.json", TokenizerError, "added_tokens.json"):
            for content, index in _read_json(folder / "added_tokens.json").items():
                decoder.setdefault(_token_index(index, "added_tokens.json"), AddedToken(content))
        if config.get("chat_template") is None and is_present(folder / "chat_template.jinja", TokenizerError,
                                                              "chat template"):
            config["chat_template"] = read_text(folder / "chat_template.jinja", TokenizerError, "chat template")
        config.update(kwargs)
        config.setdefault("added_tokens_decoder", decoder)
        return cls(vocab_file, **config)

    # ---- vocabulary ------------------------------------------------------------------------------

    @property
    def vocab_size(self):
        """Size of the SentencePiece vocabulary, without added tokens."""
        return self.sp_model.get_piece_size()

    def get_vocab(self):
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self._added_tokens_encoder)
        return vocab

    def __len__(self):
        """Full vocabulary size, added tokens included: what a model's embedding must be resized to."""
        return self.vocab_size + sum(1 for i in self._added_tokens_decoder if i >= self.vocab_size)

    @property
    def added_tokens_decoder(self):
        return dict(sorted(self._added_tokens_decoder.items()))

    @property
    def added_tokens_encoder(self):
        return {t.content: i for i, t in sorted(self._added_tokens_decoder.items())}

    def get_added_vocab(self):
        return dict(self._added_tokens_encoder)

    @property
    def all_special_tokens(self):
        tokens = [self._special_tokens[name] for name in SPECIAL_TOKEN_NAMES] + self.additional_special_tokens
        return list(dict.fromkeys(t for t in tokens if t is not None))

    @property
    def all_special_ids(self):
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def special_tokens_map(self):
        out = {name: token for name, token in self._special_tokens.items() if token is not None}
        if self.additional_special_tokens:
            out["additional_special_tokens"] = list(self.additional_special_tokens)
        return out

    def add_tokens(self, new_tokens, special_tokens=False):
        """Add tokens matched verbatim in text; returns how many were new to the vocabulary."""
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        return self._add_tokens(new_tokens, special_tokens)

    def add_special_tokens(self, special_tokens_dict):
        """Set bos/eos/unk/pad_token (or extend additional_special_tokens) and add those not yet in the
        vocabulary, with ids from len(self) on. Returns how many were added, e.g. 1 for
        `{"pad_token": "<pad>"}` on Llama 2, after which the model's embedding needs len(self) rows."""
        tokens = []
        for name, value in special_tokens_dict.items():
            if name == "additional_special_tokens":
                values = [_content(v) for v in value]
                self.additional_special_tokens += [v for v in values if v not in self.additional_special_tokens]
                tokens += values
            elif name in SPECIAL_TOKEN_NAMES:
                setattr(self, name, value)
                tokens.append(_content(value))
            else:
                raise InputError(f"unknown special token name {name!r}: expected one of "
                                 f"{', '.join(SPECIAL_TOKEN_NAMES)} or additional_special_tokens")
        return self._add_tokens(tokens, special_tokens=True)

    def _add_tokens(self, new_tokens, special_tokens=False):
        vocab = self.get_vocab()
        added = 0
        for token in new_tokens:
            if not isinstance(token, (str, AddedToken)):
                raise InputError(f"a token to add must be a string, got {type(token).__name__}")
            if str(token) == "" or (isinstance(token, str) and token in self._added_tokens_encoder):
                continue
            if isinstance(token, str):
                special = special_tokens or token in self.all_special_tokens
                token = AddedToken(token, special=special, normalized=not special)
            elif special_tokens:
                token.special = True
            if token.content in vocab:
                index = vocab[token.content]
            else:
                index = len(vocab)
                vocab[token.content] = index
                added += 1
            if token.special and token.content not in self.all_special_tokens:
                self.additional_special_tokens.append(token.content)
            self._added_tokens_decoder[index] = token
            self._added_tokens_encoder[token.content] = index
        self._split_pattern = None  # rebuilt lazily by _split_on_added_tokens
        return added

    def convert_tokens_to_ids(self, tokens):
        """Token text -> id (unk_token_id for pieces not in the vocabulary); a list maps to a list."""
        if tokens is None:
            return None
        if isinstance(tokens, str):
            if tokens in self._added_tokens_encoder:
                return self._added_tokens_encoder[tokens]
            return self.sp_model.piece_to_id(tokens)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def _check_ids(self, ids):
        size = len(self)
        for index in ids:
            if not 0 <= index < size or (index >= self.vocab_size and index not in self._added_tokens_decoder):
                raise InputError(f"token id {index} is out of range: this tokenizer has ids 0..{size - 1}")

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        """Id -> token text; a list maps to a list. Raises InputError for an id outside the vocabulary."""
        if isinstance(ids, (int, np.integer)):
            return self.convert_ids_to_tokens([ids])[0]
        ids = token_ids(ids, "token_ids", max_ndim=1, allow_empty=True).tolist()
        self._check_ids(ids)
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._added_tokens_decoder[i].content if i in self._added_tokens_decoder
                else self.sp_model.id_to_piece(i) for i in ids if i not in special]

    # ---- encoding --------------------------------------------------------------------------------

    def tokenize(self, text, **kwargs):
        """Text -> token strings, without BOS/EOS. With legacy=False the dummy prefix "▁" is added once
        to the whole text and dropped again when a special token follows it."""
        if not isinstance(text, str):
            raise InputError(f"tokenize expects a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: sentencepiece would fail obscurely
            raise InputError(f"text is not valid Unicode: {e}") from None
        if self.legacy or not text:
            return self._tokenize_with_added(text)
        text = text.replace(SPIECE_UNDERLINE, " ")
        if self.add_prefix_space:
            text = SPIECE_UNDERLINE + text
        tokens = self._tokenize_with_added(text)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def _split_on_added_tokens(self, text):
        """["a <s> b"] -> ["a ", "<s>", " b"], longest added token first, honouring lstrip/rstrip."""
        if not self._added_tokens_encoder:
            return [text]
        if self._split_pattern is None:
            alternatives = sorted(self._added_tokens_encoder, key=len, reverse=True)
            self._split_pattern = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        parts = self._split_pattern.split(text)  # odd indices are the added tokens
        for i in range(1, len(parts), 2):
            token = self._added_tokens_decoder[self._added_tokens_encoder[parts[i]]]
            if token.lstrip:
                parts[i - 1] = parts[i - 1].rstrip()
            if token.rstrip:
                parts[i + 1] = parts[i + 1].lstrip()
        return parts

    def _tokenize_with_added(self, text):
        tokens = []
        for i, part in enumerate(self._split_on_added_tokens(text)):
            if i % 2:
                tokens.append(part)
            elif part:
                tokens.extend(self._tokenize(part))
        return tokens

    def _tokenize(self, text):
        """One stretch of text without added tokens -> SentencePiece pieces."""
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp_model.encode(text, out_type=str)
        # legacy=False: the model has no dummy prefix, and sentencepiece would drop a leading "▁" of the
        # text itself; encoding unk_token + text and removing unk's pieces keeps it (transformers' trick).
        tokens = self.sp_model.encode(str(self.unk_token) + text, out_type=str)
        return tokens[self._unk_token_length:] if len(tokens) >= self._unk_token_length else tokens

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        """[BOS] ids0 [EOS] ([BOS] ids1 [EOS]), each as add_bos_token / add_eos_token say."""
        bos = [self.bos_token_id] if self.add_bos_token and self.bos_token_id is not None else []
        eos = [self.eos_token_id] if self.add_eos_token and self.eos_token_id is not None else []
        output = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            output += bos + list(token_ids_1) + eos
        return output

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        """1 where build_inputs_with_special_tokens puts (or already put) a special token, else 0."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise InputError("token_ids_1 must be None when the ids already contain special tokens")
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        """0 over the first sequence (with its special tokens), 1 over the second."""
        n_special = len(self.build_inputs_with_special_tokens([]))
        types = [0] * (len(token_ids_0) + n_special)
        if token_ids_1 is not None:
            types += [1] * (len(token_ids_1) + n_special)
        return types

    def encode(self, text, text_pair=None, add_special_tokens=True, truncation=False, max_length=None):
        """Text -> ids, with BOS (and EOS) when add_special_tokens is on."""
        if not isinstance(text, str) or not isinstance(text_pair, (str, type(None))):
            raise InputError(f"encode expects a string, got {type(text).__name__}")
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        pair = None if text_pair is None else self.convert_tokens_to_ids(self.tokenize(text_pair))
        limit = max_length if max_length is not None else self.model_max_length
        if truncation and limit < VERY_LARGE_INTEGER:  # like transformers, no limit means no truncation
            if add_special_tokens:  # the special tokens count against max_length
                limit -= len(self.build_inputs_with_special_tokens([], None if pair is None else []))
            ids, pair = self._truncate(ids, pair, max(limit, 0))
        if add_special_tokens:
            return self.build_inputs_with_special_tokens(ids, pair)
        return ids + (pair or [])

    @staticmethod
    def _truncate(ids, pair, limit):
        """Drop tokens from the end, longest sequence first (transformers' "longest_first")."""
        if pair is None:
            return ids[:limit], None
        ids, pair = list(ids), list(pair)
        while len(ids) + len(pair) > limit:
            (ids if len(ids) > len(pair) else pair).pop()
        return ids, pair

    def __call__(self, text, text_pair=None, add_special_tokens=True, padding=False, truncation=False,
                 max_length=None, return_tensors=None, padding_side=None, return_attention_mask=True):
        """Encode a string or a batch (list of strings) into a BatchEncoding of input_ids and
        attention_mask. padding: False, True/"longest" or "max_length"; padding_side defaults to
        self.padding_side ("left" is what batched generation needs); return_tensors: None or "np"."""
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        pairs = (list(text_pair) if batched else [text_pair]) if text_pair is not None else [None] * len(texts)
        if len(pairs) != len(texts):
            raise InputError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        if padding is True:
            padding = "longest"
        if padding not in (False, None, "do_not_pad", "longest", "max_length"):
            raise InputError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if return_tensors not in (None, "np"):
            from llamacpu.tokenizer.fast import tensors_error

            raise UnsupportedError(tensors_error(return_tensors))
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {side!r}")

        rows = [self.encode(t, p, add_special_tokens, truncation, max_length) for t, p in zip(texts, pairs)]
        masks = [[1] * len(r) for r in rows]
        if padding in ("longest", "max_length"):
            if padding == "longest":
                width = max(map(len, rows), default=0)
            else:
                width = max_length or self.model_max_length
                if width >= VERY_LARGE_INTEGER:
                    raise InputError("padding='max_length' needs max_length: this tokenizer has no "
                                     "model_max_length")
            if any(len(r) < width for r in rows) and self.pad_token_id is None:
                raise InputError("padding needs a pad token and this tokenizer has none: set tokenizer.pad_token"
                                 " = tokenizer.eos_token, or add_special_tokens({'pad_token': '<pad>'})")
            for r, m in zip(rows, masks):
                n = max(width - len(r), 0)
                r[:] = [self.pad_token_id] * n + r if side == "left" else r + [self.pad_token_id] * n
                m[:] = [0] * n + m if side == "left" else m + [0] * n
        if return_tensors == "np":
            if len({len(r) for r in rows}) > 1:
                raise InputError("return_tensors='np' needs rows of equal length: pass padding=True")
            rows, masks = np.array(rows, dtype=np.int64), np.array(masks, dtype=np.int64)
        elif not batched:
            rows, masks = rows[0], masks[0]
        out = BatchEncoding(input_ids=rows)
        if return_attention_mask:
            out["attention_mask"] = masks
        return out

    # ---- decoding --------------------------------------------------------------------------------

    def _legacy_added_tokens(self):
        """Added tokens that decode as separate words (joined with spaces) rather than through
        convert_tokens_to_string: the non-special ones, and additional special tokens past the
        SentencePiece vocabulary. transformers' rule, kept for identical text."""
        special = set(self.all_special_tokens)
        extra = {t for t in self.additional_special_tokens if self.convert_tokens_to_ids(t) >= self.vocab_size}
        return (set(self._added_tokens_encoder) - special) | extra

    def decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None,
               spaces_between_special_tokens=True):
        """Ids -> text, as transformers' slow LlamaTokenizer. Raises InputError for ids outside
        0..len(self)-1."""
        if isinstance(token_ids, (int, np.integer)):
            token_ids = [token_ids]
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
        special = set(self.all_special_tokens)
        legacy_added = self._legacy_added_tokens()
        sub_texts, run = [], []
        for token in tokens:
            if skip_special_tokens and token in special:
                continue
            if token in legacy_added:
                if run and (text := self.convert_tokens_to_string(run)):
                    sub_texts.append(text)
                sub_texts.append(token)
                run = []
            else:
                run.append(token)
        if run:
            sub_texts.append(self.convert_tokens_to_string(run))
        text = (" " if spaces_between_special_tokens else "").join(sub_texts)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(self, sequences, **kwargs):
        return [self.decode(ids, **kwargs) for ids in sequences]

    def convert_tokens_to_string(self, tokens):
        """Token strings -> text. Special tokens are copied verbatim; runs of pieces between them go
        through sentencepiece's decode, which turns byte-fallback pieces back into UTF-8."""
        if not tokens:
            return ""
        tokens = list(tokens)
        if tokens[0].startswith(SPIECE_UNDERLINE) and self.add_prefix_space:
            tokens[0] = tokens[0][1:]  # the dummy prefix added at encode time
        special = set(self.all_special_tokens)
        out, run, prev_is_special = "", [], False
        for i, token in enumerate(tokens):
            if token in special:
                # transformers (legacy) puts a space before the text run that precedes a special token
                if not prev_is_special and i != 0 and self.legacy:
                    out += " "
                out += self.sp_model.decode(run) + token
                prev_is_special, run = True, []
            else:
                if prev_is_special and i == 1 and self.add_prefix_space and not token.startswith(SPIECE_UNDERLINE):
                    out += " "
                run.append(token)
                prev_is_special = False
        return out + self.sp_model.decode(run)

    def apply_chat_template(self, conversation, add_generation_prompt=False, tokenize=True, chat_template=None,
                            **kwargs):
        """transformers' apply_chat_template: ids, or the prompt text with tokenize=False. The rendering
        lives in llamacpu.tokenizer.chat."""
        return apply_chat_template(self, conversation, add_generation_prompt=add_generation_prompt,
                                   tokenize=tokenize, chat_template=chat_template, **kwargs)

    # ---- saving ----------------------------------------------------------------------------------

    def save_vocabulary(self, save_directory, filename_prefix=None):
        """Write the SentencePiece model as [prefix-]tokenizer.model; returns (path,)."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise InputError(f"save_vocabulary needs an existing directory, got {save_directory}")
        out = directory / ((filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        if self.vocab_file and Path(self.vocab_file).is_file():
            if Path(self.vocab_file).resolve() != out.resolve():
                shutil.copyfile(self.vocab_file, out)
        else:
            out.write_bytes(self._model_proto)
        return (str(out),)

    def save_pretrained(self, save_directory):
        """Write tokenizer_config.json, special_tokens_map.json, tokenizer.model and (when tokens were
        added) added_tokens.json, readable by from_pretrained and by transformers."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = dict(self.init_kwargs)
        config.update({
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "add_prefix_space": self.add_prefix_space,
            "added_tokens_decoder": {str(i): asdict(t) for i, t in self.added_tokens_decoder.items()},
            **self._special_tokens,
            "additional_special_tokens": self.additional_special_tokens,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "legacy": self.legacy,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "tokenizer_class": "LlamaTokenizer",
        })
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        paths = [directory / "tokenizer_config.json", directory / "special_tokens_map.json"]
        paths[0].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths[1].write_text(json.dumps(self.special_tokens_map, indent=2, ensure_ascii=False) + "\n",
                            encoding="utf-8")
        paths += [Path(p) for p in self.save_vocabulary(directory)]
        extra = {t.content: i for i, t in self.added_tokens_decoder.items() if i >= self.vocab_size}
        if extra:
            paths.append(directory / "added_tokens.json")
            paths[-1].write_text(json.dumps(extra, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return tuple(str(p) for p in paths)

    def __repr__(self):
        return (f"LlamaTokenizer(vocab_size={self.vocab_size}, len={len(self)}, legacy={self.legacy}, "
                f"add_bos_token={self.add_bos_token}, add_eos_token={self.add_eos_token}, "
                f"padding_side={self.padding_side!r})")


def clean_up_tokenization(text):
    """transformers' clean-up of spaces before punctuation and English contractions (off for Llama)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
