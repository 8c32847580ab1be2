"""A byte-level GGUF writer for tests, independent of ferrite and gguf-py, so that malformed
files can be built field by field.

>>> img = GgufImage().kv_str("general.architecture", "qwen2").tensor("t", [4], F32, b"\\0" * 16).build()
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# value type ids
U8, I8, U16, I16, U32, I32, F32V, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
# ggml tensor type ids used here
F32, F16, Q8_0 = 0, 1, 8

_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32V: "<f", BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


def gguf_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def encode_value(vtype: int, value) -> bytes:
    if vtype in _SCALAR:
        return struct.pack(_SCALAR[vtype], value)
    if vtype == STRING:
        return gguf_str(value)
    if vtype == ARRAY:
        elem_type, items = value
        return struct.pack("<IQ", elem_type, len(items)) + b"".join(encode_value(elem_type, v) for v in items)
    raise ValueError(vtype)


@dataclass
class GgufImage:
    version: int = 3
    magic: bytes = b"GGUF"
    alignment: int = 32
    kvs: list = field(default_factory=list)  # (key bytes, raw value-with-type bytes)
    tensors: list = field(default_factory=list)  # (name bytes, dims, type id, data, offset or None)

    def kv(self, key: str | bytes, vtype: int, value) -> "GgufImage":
        k = key.encode() if isinstance(key, str) else key
        self.kvs.append((k, struct.pack("<I", vtype) + encode_value(vtype, value)))
        return self

    def kv_raw(self, key: str | bytes, raw: bytes) -> "GgufImage":
        """A key followed by arbitrary bytes where its type and value would be."""
        k = key.encode() if isinstance(key, str) else key
        self.kvs.append((k, raw))
        return self

    def kv_str(self, key: str, value: str) -> "GgufImage":
        return self.kv(key, STRING, value)

    def tensor(self, name: str | bytes, dims, ttype: int, data: bytes, offset: int | None = None) -> "GgufImage":
        n = name.encode() if isinstance(name, str) else name
        self.tensors.append((n, list(dims), ttype, data, offset))
        return self

    def build(self, n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
        out = bytearray(self.magic)
        out += struct.pack("<I", self.version)
        out += struct.pack("<QQ", len(self.tensors) if n_tensors is None else n_tensors, len(self.kvs) if n_kv is None else n_kv)
        for k, raw in self.kvs:
            out += gguf_str(k) + raw
        offsets, cursor = [], 0
        for name, dims, ttype, data, offset in self.tensors:
            off = cursor if offset is None else offset
            offsets.append(off)
            out += gguf_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
            out += struct.pack("<IQ", ttype, off)
            cursor = -(-(off + len(data)) // self.alignment) * self.alignment
        data_start = -(-len(out) // self.alignment) * self.alignment
        out += b"\0" * (data_start - len(out))
        for (name, dims, ttype, data, explicit), off in zip(self.tensors, offsets):
            if explicit is not None and explicit > (1 << 20):
                continue  # a deliberately absurd offset: nothing to write there
            end = data_start + off
            if len(out) < end:
                out += b"\0" * (end - len(out))
            out[end : end + len(data)] = data
        return bytes(out)
