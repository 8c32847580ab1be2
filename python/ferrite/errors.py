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
    """The GGUF's tokenizer cannot be built, or text or a chat template cannot be rendered."""


class InvalidTokenError(FerriteError, IndexError, ValueError):
    """A token id outside the vocabulary, wherever it is passed: ``Model.forward``,
    ``Tokenizer.decode``, ``Sampler``, a prompt of token ids, ``stop_token_ids``."""


class SamplingParameterError(FerriteError, ValueError):
    """A sampling parameter out of its range (``temperature < 0``, ``top_p`` outside (0, 1], a
    negative ``max_tokens``, ...): raised when the call is made, before any work."""


class ModelError(FerriteError, ValueError):
    """The model cannot be built from this file (unknown architecture, missing tensor)."""


class ContextLengthError(ModelError):
    """A sequence would grow past the model's context length or the KV cache."""


class CudaError(FerriteError, RuntimeError):
    """The CUDA driver, NVRTC or cuBLAS failed or is missing; the message says which."""


class CudaOutOfMemoryError(CudaError, MemoryError):
    """The GPU has too little free memory for an allocation; the message gives the sizes."""


__all__ = [
    "FerriteError",
    "GgufError",
    "KeyNotFoundError",
    "QuantError",
    "UnsupportedTypeError",
    "TokenizerError",
    "InvalidTokenError",
    "SamplingParameterError",
    "ModelError",
    "ContextLengthError",
    "CudaError",
    "CudaOutOfMemoryError",
]
