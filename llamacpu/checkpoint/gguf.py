"""Read a GGUF checkpoint (llama.cpp's single-file format) into Hugging Face names and layout.

GGUF spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md. A file is a header (magic "GGUF",
version, tensor count, key/value count), typed key/value metadata, one info record per tensor (name,
dims, ggml type, offset), then aligned tensor data. We parse it ourselves, in one bounds-checked pass
over the memory map, rather than with the `gguf` package's GGUFReader: GGUFReader trusts declared
lengths (an array of 2**60 integers near the end of a file makes it loop and allocate forever) and
builds several NumPy arrays per metadata string (~600 bytes and ~5 us each: a 15 MB file of 2M empty
strings cost it 10 s and 1.2 GB). Here every length is checked against the bytes left before it is
used, each string costs one Python str, and the number of strings and arrays is bounded by the memory
the process may use (`llamacpu.limits`). The `gguf` package still supplies the type tables.

What comes out is what `from_pretrained` gets from a Hugging Face folder:
  - `config`:   a Llama config.json dict built from the llama.* hyperparameters;
  - `tensors`:  keyed by Hugging Face names (the table GGUF_TO_HF below), shapes in PyTorch order
                (GGUF lists dims fastest-first: ne0 is the number of columns), and the Q/K rows put back
                in Hugging Face order (llama.cpp's converter permutes them, see `unpermute_qk`);
  - `tokenizer_metadata`, `metadata`: the tokenizer.* and the remaining key/value pairs.
Tensor data stays where it is: F32/F16/BF16 come back as typed views of the memory map, block-quantized
types as the raw uint8 blocks [rows, bytes_per_row], which `llamacpu.quant` interprets.
"""
from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from llamacpu.errors import CheckpointError, ConfigError, UnsupportedError
from llamacpu.limits import check_allocation, memory_budget, open_regular
from llamacpu.model.names import ALWAYS, LM_HEAD, TABLE

# GGUF tensor name -> Hugging Face name, "{i}" = layer index, from the one name table (llamacpu.model.names:
# llama.cpp gguf-py/gguf/constants.py MODEL_TENSORS[MODEL_ARCH.LLAMA]; transformers modeling_llama.py).
GGUF_TO_HF: dict[str, str] = {t.gguf: t.hf for t in TABLE if t.gguf is not None}
# Tensors with no Hugging Face counterpart. rope_freqs (Llama 3.1 GGUFs) holds the per-frequency
# divisors of llama3 rope scaling [head_dim/2]; it is passed through under its GGUF name.
# attn_rot_embd (very old conversions) is a cached RoPE table that llama.cpp skips too.
PASSTHROUGH = {"rope_freqs.weight"}
SKIPPED_SUFFIXES = (".attn_rot_embd",)

FLOAT_TYPES = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.BF16: np.uint16,  # raw bfloat16 bits; see llamacpu.kernels.halfbits
}
# Integer and float64 tensors exist in GGUF but never hold Llama weights.
NON_WEIGHT_TYPES = {GGMLQuantizationType.F64, GGMLQuantizationType.I8, GGMLQuantizationType.I16,
                    GGMLQuantizationType.I32, GGMLQuantizationType.I64}


@dataclass
class GGUFTensor:
    """One weight as stored. shape is the logical (rows, cols) in PyTorch order ((n,) for norms);
    data is [rows, cols] of float32/float16/uint16(bf16 bits) for float types, and the raw uint8
    blocks [rows, bytes_per_row] for block-quantized types (row r = ceil(cols/block) blocks)."""

    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def dtype(self) -> str:
        """Short lowercase format name: "f32", "f16", "bf16", "q4_1", "q8_0", ..."""
        return self.ggml_type.name.lower()

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def __repr__(self) -> str:
        return f"GGUFTensor({self.ggml_type.name}, shape={self.shape})"


@dataclass
class GGUFCheckpoint:
    """A parsed GGUF file. See the module docstring for what each field holds."""

    path: Path
    version: int                      # GGUF format version (2 or 3)
    config: dict[str, Any]            # Hugging Face LlamaConfig-style dict
    tensors: dict[str, GGUFTensor]    # Hugging Face names -> weights
    tokenizer_metadata: dict[str, Any]  # tokenizer.ggml.* without the prefix; other tokenizer.* keys
                                        # (chat_template, huggingface.json) without "tokenizer."
    metadata: dict[str, Any]          # every other key/value pair, under its full GGUF key

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name")

    @property
    def file_type(self) -> str | None:
        """llama.cpp's label for the dominant weight type, e.g. "MOSTLY_Q4_1" (general.file_type)."""
        ft = self.metadata.get("general.file_type")
        try:
            return LlamaFileType(ft).name
        except ValueError:
            return None if ft is None else str(ft)

    def __repr__(self) -> str:
        c = self.config
        return (f"GGUFCheckpoint({str(self.path)!r}, v{self.version}, {self.name!r}, {self.file_type}, "
                f"{c['num_hidden_layers']} layers, hidden {c['hidden_size']}, heads {c['num_attention_heads']}/"
                f"{c['num_key_value_heads']}, vocab {c['vocab_size']}, tensors {self.tensor_types()})")

    def tensor_types(self) -> dict[str, int]:
        """Count of tensors per ggml type name, e.g. {"Q4_1": 210, "F32": 61, "Q8_0": 1}."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.ggml_type.name] = counts.get(t.ggml_type.name, 0) + 1
        return counts


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Parse and validate a Llama GGUF file. Raises CheckpointError for a corrupt or truncated file,
    UnsupportedError for another architecture or an unknown tensor type, ConfigError for missing or
    inconsistent hyperparameters."""
    path = Path(path)
    parts = split_parts(path)
    if parts[0] != path:  # a later part of a split model: its metadata is in the first
        path = parts[0]
    version, fields, raw_tensors = _parse(path)
    split_count = fields.get("split.count", 1)
    if isinstance(split_count, int) and split_count > 1:
        if len(parts) != split_count:
            raise CheckpointError(f"{path}: split GGUF of {split_count} files, but its name does not follow "
                                  "llama.cpp's NAME-00001-of-0000N.gguf pattern")
        for part in parts[1:]:  # each part: its own header and tensors, memory-mapped
            if not part.is_file():
                raise CheckpointError(f"{path}: part {part.name} of this split GGUF is missing")
            raw_tensors += _parse(part)[2]

    arch = fields.get("general.architecture")
    if arch is None:
        raise CheckpointError(f"{path}: GGUF metadata has no general.architecture key")
    if arch != "llama":
        raise UnsupportedError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")

    tokenizer_metadata = {}
    metadata = {}
    for key, value in fields.items():
        if key.startswith("tokenizer.ggml."):
            tokenizer_metadata[key[len("tokenizer.ggml."):]] = value
        elif key.startswith("tokenizer."):  # chat_template, chat_template.<name>, huggingface.json
            tokenizer_metadata[key[len("tokenizer."):]] = value
        else:
            metadata[key] = value

    tensors = _map_tensors(raw_tensors, path)
    config = _config(fields, tensors, tokenizer_metadata, path)
    _check_shapes(tensors, config, path)
    for i in range(config["num_hidden_layers"]):
        for proj, heads in (("q_proj", config["num_attention_heads"]), ("k_proj", config["num_key_value_heads"])):
            t = tensors[f"model.layers.{i}.self_attn.{proj}.weight"]
            t.data = unpermute_qk(t.data, heads)
    return GGUFCheckpoint(path, version, config, tensors, tokenizer_metadata, metadata)


_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_parts(path: Path) -> list[Path]:
    """All parts of a split GGUF named as llama.cpp's gguf-split names them (PREFIX-00001-of-00003.gguf),
    in order; [path] for any other name."""
    m = _SPLIT_NAME.match(path.name)
    if not m or not 1 <= int(m["no"]) <= int(m["count"]) or int(m["count"]) > 9999:
        return [path]
    n = int(m["count"])
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's `permute(w, n_head, n_head_kv)` on the rows of Q or K.

    Hugging Face Llama applies RoPE with rotate_half: the two halves of each head's dims are the pairs
    (x[j], x[j + head_dim/2]). llama.cpp's (non-NeoX) RoPE pairs adjacent dims (x[2j], x[2j+1]), so its
    converter reorders each head's rows from [half, j] to [j, half]:
        permuted = w.reshape(n_head, 2, head_dim/2, ...).swapaxes(1, 2)
    The inverse reads the rows as [n_head, head_dim/2, 2] and swaps back. Rows are independent, so
    this is exact for quantized blocks [rows, bytes_per_row] too. Returns a C-contiguous copy.
    """
    rows = w.shape[0]
    return np.ascontiguousarray(
        w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's permutation (Hugging Face rows -> llama.cpp rows); for writing GGUF."""
    rows = w.shape[0]
    return np.ascontiguousarray(
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


# ---------------------------------------------------------------------------------------------------
# Parsing: one walk over the header with explicit bounds

GGUF_MAGIC = b"GGUF"
_SCALAR_SIZE = {  # GGUFValueType -> bytes
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}
_MAX_DIMS = 4          # GGML_MAX_DIMS
_MAX_ARRAY_DEPTH = 3   # arrays of arrays of ... (llama.cpp writes none nested)


_SCALAR_FORMAT = {  # GGUFValueType -> struct format (little-endian)
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_U64 = struct.Struct("<Q")
# Strings and arrays in the metadata: the largest real vocabularies hold ~400k tokens and merges (Llama 3:
# 128k + 280k); beyond 1M the file is hostile, not a bigger model.
_MAX_ITEMS = 1 << 20
_MAX_NESTED = 1 << 16  # arrays inside arrays
_ITEM_COST = 64  # bytes of Python objects per parsed string or array (a str header, a list slot)


class _Walker:
    """Little-endian reads over a byte buffer; every read checks the bytes exist, and the number of
    strings and arrays built is bounded by `item_limit` (from the memory the process may use)."""

    def __init__(self, buf: Any, path: Path, item_limit: int = _MAX_ITEMS):
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)
        self.items, self.item_limit, self.nested = 0, item_limit, 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise CheckpointError(
                f"{self.path}: truncated or corrupt GGUF: {what} at offset {self.pos} needs {n} bytes, "
                f"the file has {self.size - self.pos} left")

    def count(self, n: int, what: str) -> None:
        self.items += n
        if self.items > self.item_limit:
            raise CheckpointError(
                f"{self.path}: GGUF metadata holds more than {self.item_limit} strings and arrays ({what}: {n}); "
                f"the limit is a quarter of the memory this process may use at {_ITEM_COST} bytes each, "
                f"and at most {_MAX_ITEMS}")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = struct.unpack_from("<I", self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = struct.unpack_from("<Q", self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> bytes:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def text(self, what: str) -> str:
        raw = self.string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: corrupt GGUF: {what} {raw[:40]!r} is not UTF-8") from None

    def texts(self, n: int, what: str) -> list[str]:
        """n strings (a vocabulary): the loop of `text` with its checks inlined, ~0.3 us per string."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        out = []
        try:
            for _ in range(n):
                if pos + 8 > size:
                    break
                (k,) = unpack(buf, pos)
                pos += 8
                if k > size - pos:
                    break
                out.append(buf[pos:pos + k].decode("utf-8"))
                pos += k
        except UnicodeDecodeError:
            raise CheckpointError(f"{self.path}: corrupt GGUF: {what} element #{len(out)} is not UTF-8") from None
        self.pos = pos
        if len(out) < n:  # report the failing read with its offset
            self.text(f"{what} element #{len(out)}")
        return out

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        """One metadata value: int/float/bool/str, a NumPy array for a numeric array, a list for an
        array of strings, booleans or arrays."""
        if vtype in _SCALAR_FORMAT:
            self.need(_SCALAR_SIZE[vtype], what)
            (v,) = struct.unpack_from(_SCALAR_FORMAT[vtype], self.buf, self.pos)
            self.pos += _SCALAR_SIZE[vtype]
            return v
        if vtype == GGUFValueType.STRING:
            return self.text(what)
        if vtype != GGUFValueType.ARRAY:
            raise CheckpointError(f"{self.path}: corrupt GGUF: {what} has unknown value type {vtype}")
        if depth >= _MAX_ARRAY_DEPTH:
            raise CheckpointError(f"{self.path}: corrupt GGUF: {what} nests arrays too deeply")
        itype = self.u32(f"element type of {what}")
        n = self.u64(f"length of {what}")
        if itype in _NUMERIC_NP:
            size = _SCALAR_SIZE[itype]
            self.need(n * size, f"{what} ({n} elements)")
            if n * size > 1 << 24:
                check_allocation(n * size, f"{self.path}: {what}", CheckpointError)
            raw = np.frombuffer(self.buf, np.dtype(_NUMERIC_NP[itype]).newbyteorder("<"), n, self.pos)
            self.pos += n * size
            return raw.astype(_NUMERIC_NP[itype])  # a native-order copy: metadata outlives the map
        if itype == GGUFValueType.BOOL:
            self.need(n, f"{what} ({n} elements)")
            self.count(n, what)
            out = [b != 0 for b in self.buf[self.pos:self.pos + n]]
            self.pos += n
            return out
        if itype in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            # every element takes at least 8 (string length) or 12 (array header) bytes: the file bounds
            # the count before the loop runs, and item_limit bounds the objects the loop builds
            self.need(n * (8 if itype == GGUFValueType.STRING else 12), f"{what} ({n} elements)")
            self.count(n, what)
            if itype == GGUFValueType.STRING:
                return self.texts(n, what)
            self.nested += n
            if self.nested > _MAX_NESTED:
                raise CheckpointError(f"{self.path}: GGUF metadata holds more than {_MAX_NESTED} arrays inside "
                                      f"arrays ({what}: {n}); llama.cpp writes none")
            return [self.value(itype, what, depth + 1) for _ in range(n)]
        raise CheckpointError(f"{self.path}: corrupt GGUF: {what} has unknown element type {itype}")


def _parse(path: Path) -> tuple[int, dict[str, Any], list]:
    """-> (version, metadata {key: value}, [(name, ggml type, shape rows-first, data view)]). Every
    declared length is checked against the file before it is used; a FIFO or a device is refused."""
    with open_regular(path, CheckpointError, "GGUF file") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CheckpointError(f"{path}: empty file, not a GGUF checkpoint")
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot map GGUF file ({e})") from None
    w = _Walker(buf, path, min(_MAX_ITEMS, memory_budget() // 4 // _ITEM_COST))
    version, fields, infos, data_start = _walk(w)
    tensors = []
    for name, dims, ggml_type, offset in infos:
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        shape = tuple(reversed(dims))  # NumPy order: the row length (ne0) last
        n_elems = int(np.prod(dims, dtype=np.int64))
        if ggml_type in FLOAT_TYPES:
            dtype, count = np.dtype(FLOAT_TYPES[ggml_type]), n_elems
        else:  # raw blocks [rows..., bytes_per_row]
            dtype, count = np.dtype(np.uint8), n_elems // block * type_size
            shape = shape[:-1] + (dims[0] // block * type_size,)
        tensors.append((name, ggml_type, tuple(dims), np.frombuffer(buf, dtype, count, data_start + offset).reshape(shape)))
    return version, fields, tensors


def _walk(w: _Walker) -> tuple[int, dict[str, Any], list, int]:
    """Validate magic, version, every declared length and every tensor's extent; read the metadata."""
    path = w.path
    w.need(4, "magic")
    magic = bytes(w.buf[0:4])
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    w.pos = 4
    version = w.u32("version")
    if version & 0xFFFF == 0 and version != 0:
        raise UnsupportedError(f"{path}: big-endian GGUF files are not supported")
    if version == 1:
        raise UnsupportedError(f"{path}: GGUF version 1 is not supported (2 or 3); reconvert the model")
    if version not in (2, 3):
        raise CheckpointError(f"{path}: unknown GGUF version {version} (expected 2 or 3): corrupt header?")
    n_tensors = w.u64("tensor count")
    n_kv = w.u64("key/value count")
    # smallest possible key/value record: 8 (key length) + 4 (type) + 1 (u8 value); tensor info: 8+4+8+4+8
    w.need(n_kv * 13 + n_tensors * 32, f"{n_kv} key/value pairs and {n_tensors} tensor infos")

    alignment = 32  # GGUF_DEFAULT_ALIGNMENT
    w.count(n_kv + n_tensors, "keys and tensors")
    fields: dict[str, Any] = {}
    for k in range(n_kv):
        name = w.text(f"key #{k}")
        vtype = w.u32(f"value type of key #{k}")
        fields[name] = w.value(vtype, f"value of {name[:80]!r}")
        if name == "general.alignment" and vtype == GGUFValueType.UINT32:
            alignment = fields[name]
            if alignment == 0 or alignment & (alignment - 1):
                raise CheckpointError(f"{path}: general.alignment {alignment} is not a power of two")

    infos = []
    for t in range(n_tensors):
        raw_name = w.string(f"name of tensor #{t}")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{path}: corrupt GGUF: tensor #{t} name {raw_name[:40]!r} is not UTF-8") from None
        n_dims = w.u32(f"dimension count of {name}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise CheckpointError(f"{path}: corrupt GGUF: tensor {name} has {n_dims} dimensions (1..4)")
        dims = [w.u64(f"dims of {name}") for _ in range(n_dims)]
        raw_type = w.u32(f"type of {name}")
        offset = w.u64(f"data offset of {name}")
        try:
            ggml_type = GGMLQuantizationType(raw_type)
        except ValueError:
            raise UnsupportedError(f"{path}: tensor {name} has unknown ggml type {raw_type} "
                                   "(newer llama.cpp quantization?)") from None
        infos.append((name, dims, ggml_type, offset))

    data_start = -(-w.pos // alignment) * alignment
    for name, dims, ggml_type, offset in infos:
        n_elems = 1
        for d in dims:
            if d == 0 or d > 2**40:
                raise CheckpointError(f"{path}: corrupt GGUF: tensor {name} has dims {dims}")
            n_elems *= d
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        if dims[0] % block:
            raise CheckpointError(f"{path}: corrupt GGUF: tensor {name} row length {dims[0]} is not a multiple "
                                  f"of the {ggml_type.name} block size {block}")
        n_bytes = n_elems // block * type_size
        if offset % alignment:
            raise CheckpointError(f"{path}: corrupt GGUF: tensor {name} offset {offset} is not {alignment}-aligned")
        if data_start + offset + n_bytes > w.size:
            raise CheckpointError(
                f"{path}: truncated GGUF: tensor {name} ({ggml_type.name}, {n_bytes} bytes at offset "
                f"{data_start + offset}) runs past the end of the file ({w.size} bytes)")
    return version, {k: v for k, v in fields.items() if not k.startswith("GGUF.")}, infos, data_start


# ---------------------------------------------------------------------------------------------------
# Metadata -> values, tensors -> Hugging Face names, hyperparameters -> config dict

_NUMERIC_NP = {
    GGUFValueType.UINT8: np.uint8, GGUFValueType.INT8: np.int8, GGUFValueType.UINT16: np.uint16,
    GGUFValueType.INT16: np.int16, GGUFValueType.UINT32: np.uint32, GGUFValueType.INT32: np.int32,
    GGUFValueType.FLOAT32: np.float32, GGUFValueType.UINT64: np.uint64, GGUFValueType.INT64: np.int64,
    GGUFValueType.FLOAT64: np.float64,
}


def _hf_name(gguf_name: str) -> tuple[str | None, int | None]:
    """Hugging Face name and layer index (None for global tensors) of a GGUF tensor name."""
    if gguf_name in GGUF_TO_HF:
        return GGUF_TO_HF[gguf_name], None
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        template = GGUF_TO_HF.get("blk.{i}." + parts[2])
        if template is not None:
            i = int(parts[1])
            return template.format(i=i), i
    return None, None


def _map_tensors(raw_tensors: list, path: Path) -> dict[str, GGUFTensor]:
    tensors: dict[str, GGUFTensor] = {}
    unknown = []
    for name, ggml_type, dims, data in raw_tensors:
        hf, _layer = _hf_name(name)
        if hf is None:
            if name in PASSTHROUGH:
                hf = name
            elif name.endswith(SKIPPED_SUFFIXES + tuple(s + ".weight" for s in SKIPPED_SUFFIXES)):
                continue
            else:
                unknown.append(name)
                continue
        if ggml_type in NON_WEIGHT_TYPES:
            raise UnsupportedError(f"{path}: tensor {name} has type {ggml_type.name}, not a weight format")
        shape = tuple(reversed(dims))  # GGUF dims are ne0 (fastest, = columns) first
        if ggml_type in FLOAT_TYPES and data.shape != shape:
            raise CheckpointError(f"{path}: tensor {name}: data shape {data.shape} does not match dims {shape}")
        tensors[hf] = GGUFTensor(ggml_type, shape, data)
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UnsupportedError(f"{path}: tensors not part of a Llama model: {', '.join(unknown[:5])}{more}")
    return tensors


_REQUIRED = object()


def _scalar(fields: dict, key: str, path: Path, kind: type, default: Any = _REQUIRED) -> Any:
    if key not in fields:
        if default is _REQUIRED:
            raise ConfigError(f"{path}: GGUF metadata key {key!r} is missing")
        return default
    v = fields[key]
    if kind is int and isinstance(v, np.ndarray) and v.ndim == 1 and v.size and np.all(v == v[0]):
        v = int(v[0])  # per-layer arrays (head_count_kv in some files) with one value
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v, ok = float(v), True
    if not ok:
        raise ConfigError(f"{path}: GGUF metadata {key!r} should be {kind.__name__}, found {v!r:.60}")
    return v


def _config(fields: dict, tensors: dict, tok: dict, path: Path) -> dict[str, Any]:
    """Hugging Face LlamaConfig dict from llama.* hyperparameters (llama.cpp src/llama-model.cpp,
    LLM_ARCH_LLAMA: which keys are required and what they mean)."""

    def get(key, kind, default=_REQUIRED):
        return _scalar(fields, key, path, kind, default)

    if get("llama.expert_count", int, 0) > 0:
        raise UnsupportedError(f"{path}: mixture-of-experts Llama (llama.expert_count) is not supported")
    if "model.embed_tokens.weight" not in tensors:
        raise CheckpointError(f"{path}: tensor token_embd.weight is missing")
    embed_shape = tensors["model.embed_tokens.weight"].shape
    if len(embed_shape) != 2:
        raise CheckpointError(f"{path}: token_embd.weight should be 2-D, found shape {embed_shape}")

    hidden = get("llama.embedding_length", int)
    n_layers = get("llama.block_count", int)
    n_head = get("llama.attention.head_count", int)
    n_kv = get("llama.attention.head_count_kv", int, n_head)
    inter = get("llama.feed_forward_length", int)
    if min(hidden, n_layers, n_head, n_kv, inter) <= 0 or n_layers > 100_000:
        raise ConfigError(f"{path}: implausible hyperparameters: hidden {hidden}, layers {n_layers}, "
                          f"heads {n_head}/{n_kv}, intermediate {inter}")
    if n_head % n_kv:
        raise ConfigError(f"{path}: head_count {n_head} is not a multiple of head_count_kv {n_kv}")
    if "llama.attention.key_length" in fields:
        head_dim = get("llama.attention.key_length", int)
        v_dim = get("llama.attention.value_length", int, head_dim)
        if v_dim != head_dim:
            raise UnsupportedError(f"{path}: key_length {head_dim} != value_length {v_dim} is not supported")
    elif hidden % n_head == 0:
        head_dim = hidden // n_head
    else:
        raise ConfigError(f"{path}: embedding_length {hidden} is not divisible by head_count {n_head}")
    if head_dim <= 0 or head_dim % 2:
        raise ConfigError(f"{path}: head dimension {head_dim} must be positive and even (RoPE rotates pairs)")
    rope_dims = get("llama.rope.dimension_count", int, head_dim)
    if rope_dims != head_dim:
        raise UnsupportedError(f"{path}: partial rotary embedding (rope.dimension_count {rope_dims} of "
                               f"head_dim {head_dim}) is not supported")

    tok_model = tok.get("model")
    default_bos, default_eos = (1, 2) if tok_model == "llama" else (None, None)

    def token_id(key, default):
        v = tok.get(key, default)
        return v if v is None or (isinstance(v, int) and not isinstance(v, bool)) else None

    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": embed_shape[0],
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": get("llama.context_length", int),
        "rms_norm_eps": get("llama.attention.layer_norm_rms_epsilon", float),
        "rope_theta": get("llama.rope.freq_base", float, 10000.0),
        "rope_scaling": _rope_scaling(fields, path),
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": token_id("bos_token_id", default_bos),
        "eos_token_id": _end_tokens(tok, token_id("eos_token_id", default_eos)),
        "pad_token_id": token_id("padding_token_id", None),
    }


# Chat models end a turn with a token other than eos (Llama 3's <|eot_id|>): llama.cpp stops on any of
# its end-of-generation set, which holds eos, tokenizer.ggml.eot_token_id / eom_token_id and these texts.
END_OF_TURN_TEXTS = ("<|eot_id|>", "<|eom_id|>")


def _end_tokens(tok: dict, eos):
    """eos_token_id as an int, or a list [eos, eot, ...] when the vocabulary has end-of-turn tokens."""
    ends = [eos] if eos is not None else []
    for key in ("eot_token_id", "eom_token_id"):
        v = tok.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0 and v not in ends:
            ends.append(v)
    tokens = tok.get("tokens")
    if isinstance(tokens, list) and len(ends) <= 1:
        for i, t in enumerate(tokens):
            if t in END_OF_TURN_TEXTS and i not in ends:
                ends.append(i)
    return ends[0] if len(ends) == 1 else (ends or None)


def _rope_scaling(fields: dict, path: Path) -> dict[str, Any] | None:
    """rope_scaling as transformers spells it, from llama.rope.scaling.* (or the legacy scale_linear)."""
    kind = _scalar(fields, "llama.rope.scaling.type", path, str, None)
    factor = _scalar(fields, "llama.rope.scaling.factor", path, float, None)
    if kind is None and "llama.rope.scale_linear" in fields:
        kind, factor = "linear", _scalar(fields, "llama.rope.scale_linear", path, float)
    if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": factor}
    orig = _scalar(fields, "llama.rope.scaling.original_context_length", path, int, None)
    if orig is not None:
        scaling["original_max_position_embeddings"] = orig
    for key in ("yarn_log_multiplier", "yarn_ext_factor", "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow"):
        v = _scalar(fields, f"llama.rope.scaling.{key}", path, float, None)
        if v is not None:
            scaling[key.removeprefix("yarn_")] = v
    return scaling


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Hugging Face name -> shape of every tensor a GGUF Llama must hold (no biases; lm_head unless tied)."""
    c = SimpleNamespace(**config)
    shapes = {}
    for t in TABLE:
        if t.gguf is None or t.when not in (ALWAYS, LM_HEAD):
            continue
        if t.when == LM_HEAD and config["tie_word_embeddings"]:
            continue
        for i in range(config["num_hidden_layers"]) if t.per_layer else [None]:
            shapes[t.hf.format(i=i)] = t.shape(c)
    return shapes


def _check_shapes(tensors: dict[str, GGUFTensor], config: dict, path: Path) -> None:
    expected = _expected_shapes(config)
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} tensors missing for a {config['num_hidden_layers']}-layer "
                              f"Llama, first: {missing[0]}")
    for name, t in tensors.items():
        if name in PASSTHROUGH:
            continue
        if name not in expected:
            raise CheckpointError(f"{path}: tensor {name} does not belong to a "
                                  f"{config['num_hidden_layers']}-layer Llama")
        if t.shape != expected[name]:
            raise CheckpointError(f"{path}: tensor {name} has shape {t.shape}, expected {expected[name]} "
                                  "from the metadata")
