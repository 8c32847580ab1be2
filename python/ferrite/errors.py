"""Exceptions raised by ferrite. Every one derives from :class:`FerriteError`.

>>> import ferrite
>>> try:
...     ferrite.GgufFile("README.md")
... except ferrite.GgufError as e:
...     print(e)
README.md: not a GGUF file: it starts with b"# fe", not b"GGUF"
"""


class FerriteError(Exception):
    """Base class of every error ferrite raises on purpose."""


class GgufError(FerriteError, ValueError):
    """A GGUF file is malformed: the message names the offset, key or tensor."""


class KeyNotFoundError(FerriteError, KeyError):
    """A tensor name or metadata key is not in the file."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class QuantError(FerriteError, ValueError):
    """Block data does not fit the tensor type (wrong byte count, partial block)."""


class UnsupportedTypeError(QuantError, NotImplementedError):
    """A tensor type ferrite cannot dequantize or compute with. Never silently zeros."""


class TokenizerError(FerriteError, ValueError):
    """The GGUF's tokenizer cannot be built, or a token id/string is invalid."""


class ModelError(FerriteError, ValueError):
    """The model cannot be built from this file (unknown architecture, missing tensor)."""


class ContextLengthError(ModelError):
    """A sequence would grow past the model's context length or the KV cache."""


class CudaError(FerriteError, RuntimeError):
    """The CUDA driver, NVRTC or cuBLAS failed or is missing; the message says which."""


__all__ = [
    "FerriteError",
    "GgufError",
    "KeyNotFoundError",
    "QuantError",
    "UnsupportedTypeError",
    "TokenizerError",
    "ModelError",
    "ContextLengthError",
    "CudaError",
]
