"""LlamaTokenizerFast: a Hugging Face `tokenizers` tokenizer behind transformers' tokenizer API.

Reads a Hugging Face folder (tokenizer.json + tokenizer_config.json, as `LlamaTokenizerFast` /
`PreTrainedTokenizerFast` do), or wraps a ready `tokenizers.Tokenizer` (GGUF byte-level vocabularies,
see gguf_vocab.fast_tokenizer_from_gguf). Method and argument names follow transformers, so code
written against transformers runs unchanged: encode, __call__ (batching, padding, return_tensors="np"),
decode, batch_decode, tokenize, convert_ids_to_tokens, convert_tokens_to_ids, add_special_tokens,
add_tokens, save_pretrained, and the bos/eos/unk/pad token attributes.

BOS/EOS: with add_bos_token/add_eos_token given (argument or tokenizer_config.json) the post-processor
is replaced by a TemplateProcessing that adds them, exactly as transformers' LlamaTokenizerFast
.update_post_processor() does; otherwise tokenizer.json's own post-processor is kept and the two
properties report what it does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from llamacpu.errors import InputError, TokenizerError
from llamacpu.limits import is_present, open_regular, read_json, read_text
from llamacpu.validation import token_ids
from llamacpu.tokenizer.chat import apply_chat_template

SPECIAL_TOKENS_ATTRIBUTES = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                             "mask_token"]
TOKENIZER_FILE = "tokenizer.json"
SPM_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
_DEFAULT = object()
_LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


class BatchEncoding(dict):
    """transformers' BatchEncoding: a dict ("input_ids", "attention_mask") with attribute access."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def to(self, device=None, *args, **kwargs) -> "BatchEncoding":
        """transformers moves its tensors to `device`; NumPy arrays live in host memory, where llamacpu
        reads them on every backend, so this returns the encoding unchanged (`.to(model.device)` works)."""
        return self


def _token_content(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, an AddedToken dict, or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    content = getattr(value, "content", None)  # tokenizers.AddedToken
    if isinstance(content, str):
        return content
    raise TokenizerError(f"special token {value!r} is neither a string nor an AddedToken")


def tensors_error(return_tensors) -> str:
    return (f"return_tensors={return_tensors!r}: llamacpu has no torch/TensorFlow/JAX tensors; use "
            f"return_tensors='np' (NumPy int64 arrays, accepted wherever transformers takes tensors)")


def clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization: remove spaces before punctuation and English contractions."""
    return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


class LlamaTokenizerFast:
    """A `tokenizers.Tokenizer` with transformers' LlamaTokenizerFast interface."""

    padding_side = "left"       # transformers' LlamaTokenizerFast default
    truncation_side = "right"
    model_input_names = ["input_ids", "attention_mask"]
    is_fast = True

    def __init__(self, tokenizer_file: str | Path | None = None, *, tokenizer_object: Any = None,
                 bos_token: Any = _DEFAULT, eos_token: Any = _DEFAULT, unk_token: Any = _DEFAULT,
                 pad_token: Any = None,
                 add_bos_token: bool | None = None, add_eos_token: bool | None = None,
                 chat_template: str | None = None, clean_up_tokenization_spaces: bool = False,
                 padding_side: str | None = None, truncation_side: str | None = None,
                 model_max_length: int | None = None, additional_special_tokens: Iterable[Any] = (),
                 name_or_path: str = "", **special_tokens: Any):
        from tokenizers import Tokenizer

        if tokenizer_object is not None:
            self._tokenizer = tokenizer_object
        elif tokenizer_file is not None:
            open_regular(tokenizer_file, TokenizerError, "tokenizer.json").close()  # a FIFO would block
            try:
                self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
            except Exception as e:
                raise TokenizerError(f"{tokenizer_file}: not a valid tokenizer.json ({e})") from e
        else:
            raise TokenizerError("LlamaTokenizerFast needs tokenizer_file or tokenizer_object")
        self.name_or_path = str(name_or_path)
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        if padding_side is not None:
            self.padding_side = padding_side
        if truncation_side is not None:
            self.truncation_side = truncation_side
        self.model_max_length = model_max_length
        self.init_kwargs = {"add_bos_token": add_bos_token, "add_eos_token": add_eos_token}

        self._special: dict[str, str | None] = dict.fromkeys(SPECIAL_TOKENS_ATTRIBUTES)
        self._additional_special: list[str] = []
        given = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token, "pad_token": pad_token}
        for key, value in special_tokens.items():
            if key not in SPECIAL_TOKENS_ATTRIBUTES:
                raise TypeError(f"LlamaTokenizerFast got an unexpected keyword argument {key!r}")
            given[key] = value
        for key, value in given.items():
            if value is _DEFAULT:  # transformers' defaults "<s>", "</s>", "<unk>", where the vocabulary has them
                value = _LLAMA_DEFAULTS[key] if self._tokenizer.token_to_id(_LLAMA_DEFAULTS[key]) is not None else None
            self._set_special(key, _token_content(value))
        for value in additional_special_tokens:
            self._add_additional(_token_content(value))

        if add_bos_token is None or add_eos_token is None:
            probed_bos, probed_eos = self._probe_bos_eos()
        self._add_bos_token = probed_bos if add_bos_token is None else bool(add_bos_token)
        self._add_eos_token = probed_eos if add_eos_token is None else bool(add_eos_token)
        if add_bos_token is not None or add_eos_token is not None:
            self.update_post_processor()

    # --- loading and saving -----------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "LlamaTokenizerFast":
        """Load from a local folder holding tokenizer.json and (optionally) tokenizer_config.json,
        special_tokens_map.json and chat_template.jinja. Keyword arguments override the config."""
        folder = Path(pretrained_model_name_or_path)
        converted = None
        if not is_present(folder / TOKENIZER_FILE, TokenizerError, TOKENIZER_FILE):
            if not is_present(folder / SPM_FILE, TokenizerError, SPM_FILE):
                raise TokenizerError(f"{folder}: no {TOKENIZER_FILE} or {SPM_FILE} (a fast tokenizer needs one)")
            from .convert import tokenizer_from_sentencepiece

            converted = tokenizer_from_sentencepiece(folder / SPM_FILE)  # as transformers converts it
        config: dict[str, Any] = {}
        for name in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):  # the config wins over the map
            p = folder / name
            if is_present(p, TokenizerError, name):
                config.update(read_json(p, TokenizerError, name))
        if is_present(folder / CHAT_TEMPLATE_FILE, TokenizerError, "chat template"):
            config["chat_template"] = read_text(folder / CHAT_TEMPLATE_FILE, TokenizerError, "chat template")
        # a list of named templates ([{"name": "default", "template": ...}, {"name": "tool_use", ...}]) is
        # kept as it is: apply_chat_template picks "default" or the name given (llamacpu.tokenizer.chat)
        max_len = config.get("model_max_length")
        if not isinstance(max_len, int) or max_len > 10**12:  # transformers writes 1e30 for "no limit"
            max_len = None
        args: dict[str, Any] = {
            "add_bos_token": config.get("add_bos_token"),
            "add_eos_token": config.get("add_eos_token"),
            "chat_template": config.get("chat_template"),
            "clean_up_tokenization_spaces": bool(config.get("clean_up_tokenization_spaces", False)),
            "padding_side": config.get("padding_side"),
            "truncation_side": config.get("truncation_side"),
            "model_max_length": max_len,
            "additional_special_tokens": config.get("additional_special_tokens") or (),
        }
        for key in SPECIAL_TOKENS_ATTRIBUTES:
            if config.get(key) is not None:
                args[key] = config[key]
        args.update(kwargs)
        if converted is None:
            return cls(folder / TOKENIZER_FILE, name_or_path=str(folder), **args)
        tokenizer_object, names = converted
        for key, value in names.items():
            args.setdefault(key, value)
        # without add_bos_token in a tokenizer_config.json, transformers 5's converted tokenizer adds
        # no BOS (no post-processor): the same here, so ids agree
        tok = cls(tokenizer_object=tokenizer_object, name_or_path=str(folder), **args)
        tok.vocab_file = str(folder / SPM_FILE)
        return tok

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; return their paths."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(folder / TOKENIZER_FILE))
        special_map = {k: v for k, v in self._special.items() if v is not None}
        if self._additional_special:
            special_map["additional_special_tokens"] = list(self._additional_special)
        config = {
            "tokenizer_class": "LlamaTokenizerFast",
            **special_map,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        paths = (folder / TOKENIZER_CONFIG_FILE, folder / SPECIAL_TOKENS_MAP_FILE, folder / TOKENIZER_FILE)
        paths[0].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths[1].write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return tuple(str(p) for p in paths)

    def save_vocabulary(self, save_directory: str | Path, filename_prefix: str | None = None) -> tuple[str, ...]:
        """The SentencePiece tokenizer.model this tokenizer was converted from (as transformers writes),
        else tokenizer.json; returns the path written."""
        import shutil

        folder = Path(save_directory)
        if not folder.is_dir():
            raise InputError(f"save_vocabulary needs an existing directory, got {save_directory}")
        prefix = filename_prefix + "-" if filename_prefix else ""
        source = getattr(self, "vocab_file", None)
        if source and Path(source).is_file():
            out = folder / (prefix + SPM_FILE)
            if Path(source).resolve() != out.resolve():
                shutil.copyfile(source, out)
        else:
            out = folder / (prefix + TOKENIZER_FILE)
            self._tokenizer.save(str(out))
        return (str(out),)

    # --- transformers 4.x helpers (transformers 5 removed them from LlamaTokenizerFast; kept here) -

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        """[BOS] ids0 [EOS] ([BOS] ids1 [EOS]), each as add_bos_token / add_eos_token say."""
        bos = [self.bos_token_id] if self.add_bos_token and self.bos_token_id is not None else []
        eos = [self.eos_token_id] if self.add_eos_token and self.eos_token_id is not None else []
        out = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            out += bos + list(token_ids_1) + eos
        return out

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        """1 where build_inputs_with_special_tokens puts (or already put) a special token, else 0."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise InputError("token_ids_1 must be None when the ids already contain special tokens")
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        bos, eos = [1] * self.add_bos_token, [1] * self.add_eos_token
        mask = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            mask += bos + [0] * len(token_ids_1) + eos
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int],
                                             token_ids_1: list[int] | None = None) -> list[int]:
        """0 over the first sequence (with its special tokens), 1 over the second."""
        n_special = len(self.build_inputs_with_special_tokens([]))
        types = [0] * (len(token_ids_0) + n_special)
        if token_ids_1 is not None:
            types += [1] * (len(token_ids_1) + n_special)
        return types

    # --- special tokens ---------------------------------------------------------------------------

    def _set_special(self, key: str, token: str | None) -> None:
        """Register a special token; like transformers, one missing from the vocabulary is added."""
        from tokenizers import AddedToken

        if token is not None:
            self._tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        self._special[key] = token

    def _add_additional(self, token: str | None) -> int:
        from tokenizers import AddedToken

        if token is None or token in self._additional_special:
            return 0
        self._additional_special.append(token)
        return self._tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)])

    def _probe_bos_eos(self) -> tuple[bool, bool]:
        """What the current post-processor adds: encode one character with and without specials."""
        with_sp = self._tokenizer.encode("a", add_special_tokens=True).ids
        without = self._tokenizer.encode("a", add_special_tokens=False).ids
        bos, eos = self.bos_token_id, self.eos_token_id
        added_bos = bos is not None and len(with_sp) > len(without) and with_sp[0] == bos
        added_eos = eos is not None and len(with_sp) > len(without) and with_sp[-1] == eos
        return added_bos, added_eos

    def update_post_processor(self) -> None:
        """Make the post-processor add BOS/EOS per add_bos_token/add_eos_token (transformers' code)."""
        from tokenizers import processors

        bos, eos = self.bos_token, self.eos_token
        if self._add_bos_token and bos is None:
            raise TokenizerError("add_bos_token = True but bos_token = None")
        if self._add_eos_token and eos is None:
            raise TokenizerError("add_eos_token = True but eos_token = None")
        single = (f"{(bos + ':0 ') if self._add_bos_token else ''}$A:0"
                  f"{(' ' + eos + ':0') if self._add_eos_token else ''}")
        pair = (f"{single}{(' ' + bos + ':1') if self._add_bos_token else ''} $B:1"
                f"{(' ' + eos + ':1') if self._add_eos_token else ''}")
        special = []
        if self._add_bos_token:
            special.append((bos, self.bos_token_id))
        if self._add_eos_token:
            special.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                       special_tokens=special)

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = bool(value)
        self.update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = bool(value)
        self.update_post_processor()

    def _special_id(self, key: str) -> int | None:
        token = self._special[key]
        return None if token is None else self._tokenizer.token_to_id(token)

    bos_token = property(lambda self: self._special["bos_token"],
                         lambda self, v: self._set_special("bos_token", _token_content(v)))
    eos_token = property(lambda self: self._special["eos_token"],
                         lambda self, v: self._set_special("eos_token", _token_content(v)))
    unk_token = property(lambda self: self._special["unk_token"],
                         lambda self, v: self._set_special("unk_token", _token_content(v)))
    pad_token = property(lambda self: self._special["pad_token"],
                         lambda self, v: self._set_special("pad_token", _token_content(v)))
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))

    @property
    def additional_special_tokens(self) -> list[str]:
        return list(self._additional_special)

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {k: v for k, v in self._special.items() if v is not None}
        if self._additional_special:
            m["additional_special_tokens"] = list(self._additional_special)
        return m

    @property
    def all_special_tokens(self) -> list[str]:
        out = [v for v in self._special.values() if v is not None] + self._additional_special
        return list(dict.fromkeys(out))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._tokenizer.token_to_id(t) for t in self.all_special_tokens]

    def add_special_tokens(self, special_tokens_dict: dict[str, Any],
                           replace_additional_special_tokens: bool = True) -> int:
        """Set special-token attributes (bos_token, pad_token, ..., additional_special_tokens), adding
        tokens missing from the vocabulary. Returns how many tokens were added."""
        before = len(self)
        for key, value in special_tokens_dict.items():
            if key == "additional_special_tokens":
                if replace_additional_special_tokens:
                    self._additional_special = []
                for v in value:
                    self._add_additional(_token_content(v))
            elif key in SPECIAL_TOKENS_ATTRIBUTES:
                self._set_special(key, _token_content(value))
            else:
                raise InputError(f"{key!r} is not a special token attribute ({', '.join(SPECIAL_TOKENS_ATTRIBUTES)}, "
                                 "additional_special_tokens)")
        return len(self) - before

    def add_tokens(self, new_tokens: str | Iterable[Any], special_tokens: bool = False) -> int:
        """Add plain (or special) tokens to the vocabulary; returns how many were new."""
        from tokenizers import AddedToken

        if isinstance(new_tokens, str) or hasattr(new_tokens, "content"):
            new_tokens = [new_tokens]
        toks = [t if isinstance(t, AddedToken) else AddedToken(t, special=special_tokens, normalized=not special_tokens)
                for t in new_tokens]
        if special_tokens:
            return self._tokenizer.add_special_tokens(toks)
        return self._tokenizer.add_tokens(toks)

    # --- vocabulary -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens (transformers' meaning)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def backend_tokenizer(self) -> Any:
        """The underlying tokenizers.Tokenizer."""
        return self._tokenizer

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | None | list[int | None]:
        """Ids of tokens; unknown tokens map to unk_token_id (None when there is no unk token)."""
        if isinstance(tokens, str):
            tid = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if tid is None else tid
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            self._check_ids([int(ids)])
            return self._tokenizer.id_to_token(int(ids))
        ids = self._check_ids(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(i) for i in ids if i not in special]

    def _check_ids(self, ids: Any) -> list[int]:
        """ids as a list of ints, after checking they are integers inside the vocabulary."""
        arr = token_ids(ids, "token_ids", max_ndim=1, allow_empty=True)
        if arr.size == 0:
            return []
        n = len(self)
        bad = (arr < 0) | (arr >= n)
        if bad.any():
            raise InputError(f"token id {arr[bad][0]} is not in the vocabulary (0..{n - 1})")
        return arr.astype(np.int64).tolist()

    # --- encoding ---------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).tokens

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               truncation: bool = False, max_length: int | None = None, **_: Any) -> list[int]:
        """Token ids of one text (and optional pair), with BOS/EOS per add_special_tokens."""
        if not isinstance(text, str) or (text_pair is not None and not isinstance(text_pair, str)):
            raise InputError(f"encode expects a string, got {type(text).__name__}")
        ids = self._tokenizer.encode(text, text_pair, add_special_tokens=add_special_tokens).ids
        return self._truncate(ids, truncation, max_length)

    def _truncate(self, ids: list[int], truncation: Any, max_length: int | None) -> list[int]:
        if not truncation or truncation == "do_not_truncate":
            return ids
        limit = max_length if max_length is not None else self.model_max_length
        if limit is None or len(ids) <= limit:
            return ids
        return ids[:limit] if self.truncation_side == "right" else ids[len(ids) - limit:]

    def __call__(self, text: str | list[str], text_pair: str | list[str] | None = None,
                 add_special_tokens: bool = True, padding: bool | str = False, truncation: bool | str = False,
                 max_length: int | None = None, return_tensors: str | None = None,
                 return_attention_mask: bool | None = None, pad_to_multiple_of: int | None = None,
                 padding_side: str | None = None, **_: Any) -> BatchEncoding:
        """Encode one text or a batch. Returns BatchEncoding(input_ids, attention_mask): lists, or
        int64 arrays [batch, seq] with return_tensors="np" (a single text becomes a batch of one)."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise InputError("text must be a string or a list of strings")
        if text_pair is not None:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise InputError(f"{len(texts)} texts but {len(pairs)} text pairs")
            encs = self._tokenizer.encode_batch(list(zip(texts, pairs)), add_special_tokens=add_special_tokens)
        else:
            encs = self._tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        ids = [self._truncate(e.ids, truncation, max_length) for e in encs]
        masks = [[1] * len(x) for x in ids]

        if padding is True or padding == "longest":
            target = max((len(x) for x in ids), default=0)
        elif padding == "max_length":
            target = max_length if max_length is not None else self.model_max_length
            if target is None:
                raise InputError("padding='max_length' needs max_length (or a model_max_length)")
        elif padding in (False, None, "do_not_pad"):
            target = None
        else:
            raise InputError(f"padding={padding!r}: expected True, False, 'longest', 'max_length' or 'do_not_pad'")
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        if target is not None:
            pad_id = self.pad_token_id
            if pad_id is None:
                raise InputError("Asking to pad but the tokenizer does not have a padding token: set "
                                 "tokenizer.pad_token (for example tokenizer.pad_token = tokenizer.eos_token)")
            side = padding_side or self.padding_side
            if side not in ("left", "right"):
                raise InputError(f"padding_side must be 'left' or 'right', got {side!r}")
            for k, x in enumerate(ids):
                n = max(target - len(x), 0)
                if side == "left":
                    ids[k], masks[k] = [pad_id] * n + x, [0] * n + masks[k]
                else:
                    ids[k], masks[k] = x + [pad_id] * n, masks[k] + [0] * n

        out = BatchEncoding()
        if return_tensors is None:
            out["input_ids"] = ids[0] if single else ids
            if return_attention_mask is not False:
                out["attention_mask"] = masks[0] if single else masks
            return out
        if return_tensors != "np":
            raise InputError(tensors_error(return_tensors))
        if len({len(x) for x in ids}) > 1:
            raise InputError("Unable to create a tensor from sequences of different lengths: use padding=True")
        out["input_ids"] = np.array(ids, dtype=np.int64).reshape(len(ids), -1)
        if return_attention_mask is not False:
            out["attention_mask"] = np.array(masks, dtype=np.int64).reshape(len(ids), -1)
        return out

    def apply_chat_template(self, conversation: list[dict[str, str]], add_generation_prompt: bool = False,
                            tokenize: bool = True, chat_template: str | None = None, **kwargs: Any) -> Any:
        """transformers' apply_chat_template (see llamacpu.tokenizer.chat): ids, or text with tokenize=False."""
        return apply_chat_template(self, conversation, add_generation_prompt=add_generation_prompt,
                                   tokenize=tokenize, chat_template=chat_template, **kwargs)

    # --- decoding ---------------------------------------------------------------------------------

    def decode(self, token_ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None, **_: Any) -> str:
        if isinstance(token_ids, (int, np.integer)):
            token_ids = [int(token_ids)]
        ids = self._check_ids(token_ids)
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        clean = clean_up_tokenization_spaces
        if clean is None:
            clean = self.clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    def batch_decode(self, sequences: Iterable[Any], skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> list[str]:
        return [self.decode(s, skip_special_tokens=skip_special_tokens,
                            clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs) for s in sequences]

    def __repr__(self) -> str:
        return (f"LlamaTokenizerFast(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"len={len(self)}, special_tokens={self.special_tokens_map}, add_bos_token={self.add_bos_token}, "
                f"add_eos_token={self.add_eos_token}, padding_side={self.padding_side!r})")

