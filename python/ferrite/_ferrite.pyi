"""Type stubs for ``ferrite._ferrite``, the native (Rust/PyO3) module.

Everything here is re-exported by ``ferrite`` (see ``ferrite/__init__.py``); import it from there:

>>> import ferrite
>>> f = ferrite.GgufFile(ferrite.fetch_test_model())

The classes are defined in Rust (``src/python/*.rs``); keep this file in step with their
``#[pyo3(signature = ...)]`` attributes. Exceptions are the classes of ``ferrite.errors``.
"""

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Union, final, overload

import numpy as np
import numpy.typing as npt

if sys.version_info >= (3, 11):
    from typing import Self
else:
    from typing_extensions import Self

__version__: str

# What pyo3 lists in the module's ``__all__`` (registration order, src/python/mod.rs).
__all__ = [
    "__version__",
    "GgufFile",
    "TensorInfo",
    "dequantize",
    "ggml_types",
    "Model",
    "Tokenizer",
    "IncrementalDecoder",
    "Sampler",
    "_sample_rows",
    "Engine",
    "Request",
    "RequestOutput",
    "GenerationResult",
    "Timings",
    "Generator",
    "TextStream",
    "cuda_available",
    "cuda_device_count",
    "cuda_device_info",
    "_cuda_dequantize_poisoned",
    "_cuda_upload_bandwidth",
    "_cuda_try_alloc",
    "_cuda_fault_selftest",
    "_cuda_matvec",
    "_cuda_matvecs",
    "_cuda_weight_rows",
    "_cuda_matvec_time",
    "_cuda_copy_time",
    "_cuda_matvec_force_plan",
    "_cuda_matvec_stream",
    "_cuda_matvec_stream_rows",
    "_cuda_int8_max_rows",
    "_cuda_row_op",
    "_cuda_gemm_f16",
    "_cuda_gemm_f16_norm",
    "_cuda_counters",
    "DeviceTensor",
]

_StrPath = Union[str, "os.PathLike[str]"]
# A metadata value as Python sees it: int, float, bool, str, or a (nested) list of those.
_MetaValue = Any
# A ggml tensor type by name ("Q4_K") or by id (12).
_GgmlType = Union[str, int]
# Raw block bytes: ``bytes`` or a C-contiguous uint8 numpy array such as ``GgufFile.raw()``.
_RawBytes = Union[bytes, npt.NDArray[np.uint8]]
# A device string: "cpu", "cuda" or "cuda:N".
_Device = str
_KvDtype = Literal["float32", "float16"]
# One chat message: {"role": ..., "content": ..., optional "tool_calls": [...]}.
_Message = Mapping[str, Any]
# A prompt for Generator: raw text, one conversation, or token ids.
_Prompt = Union[str, Sequence[_Message], Sequence[int]]

# ---------------------------------------------------------------------------------------------
# GGUF files (src/python/gguf.rs)
# ---------------------------------------------------------------------------------------------

@final
class GgufFile:
    """A GGUF file (v2 or v3), memory-mapped. Metadata and tensor infos are parsed and validated
    at open; tensor data is read from the map on demand. Raises ``ferrite.GgufError`` for a
    malformed file (the message starts with the path; a wrong magic is shown as a bytes literal,
    ``b"\\x7fELF"``), ``FileNotFoundError`` for a missing one, ``OSError`` for a directory or
    another file that is not a regular file.

    >>> with ferrite.GgufFile("model.gguf") as f:
    ...     w = f.tensor("blk.0.attn_q.weight")   # float32, shape (896, 896)
    """

    def __new__(cls, path: _StrPath) -> Self: ...
    @property
    def path(self) -> Path | None:
        """The file's path (``None`` for an in-memory image)."""
    @property
    def version(self) -> int:
        """GGUF format version (2 or 3)."""
    @property
    def alignment(self) -> int:
        """Alignment of tensor data in bytes (``general.alignment``, default 32)."""
    @property
    def data_offset(self) -> int:
        """File offset of the tensor data section, in bytes."""
    @property
    def size_bytes(self) -> int:
        """File size in bytes."""
    @property
    def metadata(self) -> MappingProxyType[str, _MetaValue]:
        """All metadata as a read-only mapping of Python values, in file order; built once and
        cached (the same object on every access).

        >>> f.metadata["general.architecture"]
        'qwen2'
        """
    @property
    def tensors(self) -> dict[str, TensorInfo]:
        """Tensor infos by name, in file order.

        >>> f.tensors["output.weight"].ggml_type
        'Q8_0'
        """
    def tensor(self, name: str, device: _Device = "cpu") -> npt.NDArray[np.float32]:
        """Tensor ``name`` dequantized to a new float32 array in numpy order (GGUF dims
        reversed). Raises ``KeyNotFoundError`` for an unknown name, ``UnsupportedTypeError``
        (naming tensor and type) for a type ferrite cannot dequantize.

        >>> f.tensor("token_embd.weight").shape
        (151936, 896)
        """
    def device_tensor(self, name: str, device: _Device = "cuda") -> DeviceTensor:
        """Tensor ``name`` dequantized on a GPU and left there (DLPack, no copy to torch/CuPy)."""
    def raw(self, name: str) -> npt.NDArray[np.uint8]:
        """The block bytes of tensor ``name`` as a read-only 1-D uint8 view of the map (no copy);
        the view keeps the file mapped while it lives, even after ``close()``.

        >>> ferrite.dequantize(f.raw("output.weight"), "Q8_0", (151936, 896))
        """
    def close(self) -> None:
        """Releases this object's hold on the map; later calls raise ``ValueError``. Arrays from
        ``raw()`` stay valid."""
    def __contains__(self, name: str, /) -> bool: ...
    def __len__(self) -> int: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

@final
class TensorInfo:
    """Where a tensor's blocks are and what they hold (from ``GgufFile.tensors``; not
    constructible from Python).

    >>> info = f.tensors["blk.0.ffn_down.weight"]
    >>> info.ggml_type, info.shape, info.dims
    ('Q6_K', [896, 4864], [4864, 896])
    """

    @property
    def name(self) -> str:
        """GGUF tensor name, e.g. ``"blk.0.attn_q.weight"``."""
    @property
    def ggml_type(self) -> str:
        """ggml type name, e.g. ``"Q4_K"``."""
    @property
    def type_id(self) -> int:
        """ggml type id as stored in the file."""
    @property
    def shape(self) -> list[int]:
        """numpy order (GGUF dims reversed)."""
    @property
    def dims(self) -> list[int]:
        """GGUF order (row length first)."""
    @property
    def offset(self) -> int:
        """Offset of the data from the start of the data section, in bytes."""
    @property
    def file_offset(self) -> int:
        """Offset of the data from the start of the file, in bytes."""
    @property
    def n_bytes(self) -> int:
        """Size of the block data in bytes."""
    @property
    def n_elements(self) -> int:
        """Number of elements (the product of the dims)."""

def dequantize(
    raw: _RawBytes,
    ggml_type: _GgmlType,
    shape: Sequence[int],
    device: _Device = "cpu",
) -> npt.NDArray[np.float32]:
    """Dequantizes raw block bytes of type ``ggml_type`` (name or id) into a new float32 array of
    ``shape`` (numpy order) on ``device``. The byte count must match the shape exactly
    (``QuantError`` otherwise); an unsupported type raises ``UnsupportedTypeError``.

    >>> ferrite.dequantize(f.raw("output.weight"), "Q8_0", (151936, 896))
    """

def ggml_types() -> list[tuple[str, int, int, int]]:
    """Every ggml type ferrite knows as ``(name, id, block_elements, block_bytes)``.

    >>> ("Q4_K", 12, 256, 144) in ferrite.ggml_types()
    True
    """

# ---------------------------------------------------------------------------------------------
# Models (src/python/model.rs)
# ---------------------------------------------------------------------------------------------

@final
class Model:
    """A Qwen2-family model (``qwen2``, ``llama``) loaded on a device, with its paged KV cache and
    generation engine. ``forward`` returns float32 logits ``[rows, vocab]``.

    >>> m = ferrite.Model.load(ferrite.fetch_test_model())
    >>> m.forward([9707, 11, 1879], last_only=True).shape
    (1, 151936)
    """

    @staticmethod
    def load(
        path_or_file: _StrPath | GgufFile,
        device: _Device = "auto",
        max_batch: int = 64,
        kv_cache_tokens: int | None = None,
        exact_matmul: bool = False,
        max_step_tokens: int | None = None,
        prefix_caching: bool = True,
        threads: int | None = None,
        kv_cache_dtype: _KvDtype = "float32",
    ) -> Model:
        """Loads a model from a path or an open ``GgufFile`` onto ``device`` (``"auto"``: the
        first CUDA GPU when usable, else the CPU; ``"cpu"``, ``"cuda"`` or ``"cuda:N"``).
        ``max_batch``: sequences running together at most. ``kv_cache_tokens``: token positions of
        the paged KV cache shared by all sequences (default: the context length; blocks are taken
        as sequences grow). ``exact_matmul``: the float32 reference arithmetic, slower and
        closest to a float64 forward pass (max |logit difference| ~1e-3 on the test model): on
        the CPU dequantized float32 weights instead of 8-bit-quantized activations (~0.45 by
        default, as llama.cpp); on a GPU float32 CUDA cores from 3 rows, where the default
        multiplies f16 weights and activations on the tensor cores (more than 4 rows; ~0.04) or
        keeps 16 bits of each activation (3-4 rows); one or two rows are exact either way.
        ``max_step_tokens``: tokens one engine step computes at most (default 2048 on a GPU, 256
        on a CPU). ``prefix_caching``: reuse the KV of prompts that start alike. ``threads``
        (CPU): threads for every op (default: the physical cores). ``kv_cache_dtype``: what the
        KV cache stores keys and values as, ``"float32"`` or ``"float16"`` (rounded to nearest,
        half the memory; attention still computes in float32). Raises ``ModelError`` for an unknown architecture or a missing tensor,
        ``CudaError`` when the GPU cannot be used, ``ValueError`` for an option out of range.

        >>> m = ferrite.Model.load("model.gguf", device="cuda:0")
        """
    @property
    def config(self) -> dict[str, Any]:
        """The hyperparameters as a new dict: ``arch`` (str), ``n_layers``, ``hidden_size``,
        ``ffn_size``, ``n_heads``, ``n_kv_heads``, ``head_dim``, ``vocab_size``,
        ``context_length`` (int), ``rope_freq_base``, ``rope_scale``, ``rms_norm_eps`` (float),
        ``tied_embeddings`` (bool).

        >>> m.config["n_layers"]
        24
        """
    @property
    def device(self) -> str:
        """The device the model runs on: ``"cpu"``, ``"cuda:0"``, ..."""
    @property
    def kv_cache_tokens(self) -> int:
        """Token positions of the KV cache shared by all sequences."""
    @property
    def kv_cache_dtype(self) -> _KvDtype:
        """What the KV cache stores keys and values as: ``"float32"`` or ``"float16"``."""
    @property
    def max_batch(self) -> int:
        """Sequences running together at most."""
    @overload
    def forward(
        self,
        token_ids: Sequence[int],
        last_only: bool = False,
        seq: int | None = None,
        *,
        on_device: Literal[False] = False,
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def forward(
        self,
        token_ids: Sequence[int],
        last_only: bool = False,
        seq: int | None = None,
        *,
        on_device: bool,
    ) -> npt.NDArray[np.float32] | DeviceTensor:
        """Logits for ``token_ids``: ``[len(token_ids), vocab]``, or ``[1, vocab]`` with
        ``last_only=True``. Without ``seq`` the tokens form a fresh sequence (positions from 0,
        nothing kept); with ``seq`` (from ``new_sequence``) they are appended to its KV cache.
        Raises ``ContextLengthError`` past the context length. The GIL is released.
        ``on_device=True`` leaves the logits on the model's device: a ``DeviceTensor`` on a GPU,
        a numpy array on the CPU.

        >>> s = m.new_sequence(); m.forward([9707, 11], seq=s); m.forward([1879], seq=s)
        """
    def forward_batch(
        self,
        batch: Sequence[Sequence[int]],
        last_only: bool = True,
        seqs: Sequence[int | None] | None = None,
    ) -> list[npt.NDArray[np.float32]]:
        """Several sequences in one batched pass; one float32 array per entry (``[1, vocab]``
        with ``last_only=True``, else ``[len(ids), vocab]``). ``seqs``: a sequence id or
        ``None`` (fresh) per entry.

        >>> a, b = m.forward_batch([[9707, 11], [1879]])
        """
    def new_sequence(self, max_tokens: int | None = None) -> int:
        """Reserves KV-cache room for up to ``max_tokens`` tokens (default
        ``min(4096, context_length)``); returns the sequence id for ``forward(..., seq=id)``.

        >>> s = m.new_sequence(max_tokens=256)
        """
    def free_sequence(self, seq: int) -> None:
        """Releases a sequence's KV-cache room."""
    def sequence_len(self, seq: int) -> int:
        """Tokens a sequence holds in its KV cache."""

# ---------------------------------------------------------------------------------------------
# Tokenizer (src/python/tokenizer.rs)
# ---------------------------------------------------------------------------------------------

@final
class Tokenizer:
    """The GGUF's own byte-level BPE tokenizer (vocabulary, merges, special tokens, chat
    template).

    >>> tok = ferrite.Tokenizer.from_gguf(ferrite.fetch_test_model())
    >>> tok.decode(tok.encode("Hello, world!"))
    'Hello, world!'
    """

    @staticmethod
    def from_gguf(source: _StrPath | GgufFile) -> Tokenizer:
        """Builds the tokenizer from a GGUF path or an open ``GgufFile``. Raises
        ``TokenizerError`` (its message starts with the file's path) for a tokenizer ferrite does
        not implement (a non-``gpt2`` model, an unknown ``tokenizer.ggml.pre``)."""
    def encode(self, text: str, add_special_tokens: bool = True, parse_special: bool = True) -> list[int]:
        """Text to token ids. Special-token strings in the text (``<|im_start|>``) are matched
        whole unless ``parse_special=False``; ``add_special_tokens`` adds BOS/EOS only where the
        GGUF asks (never for Qwen2).

        >>> tok.encode("<|im_start|>user\\nhi")
        [151644, 872, 198, 6023]
        """
    def encode_batch(
        self,
        texts: Sequence[str],
        add_special_tokens: bool = True,
        parse_special: bool = True,
    ) -> list[list[int]]:
        """``encode`` for many texts, in parallel with the GIL released.

        >>> tok.encode_batch(["hello", "world"])
        [[14990], [14615]]
        """
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Token ids to text (an incomplete trailing character becomes U+FFFD). Each GGUF token
        type decodes as in llama.cpp: UNUSED padding slots (``[PAD151665]``) give no text;
        CONTROL tokens such as ``<|im_end|>`` give theirs unless ``skip_special_tokens``;
        USER_DEFINED ones always do."""
    def decode_bytes(self, ids: Sequence[int], skip_special_tokens: bool = False) -> bytes:
        """The exact bytes the ids stand for (lossless; may be invalid UTF-8)."""
    def id_to_token(self, id: int) -> str:
        """The vocabulary entry for an id, in byte-level form (a space is ``"Ġ"``)."""
    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (byte-level form), or ``None``.

        >>> tok.token_to_id("<|im_end|>")
        151645
        """
    def is_special(self, id: int) -> bool:
        """Whether the id is a special (CONTROL) token, e.g. ``<|im_end|>``."""
    @property
    def vocab_size(self) -> int:
        """Number of ids, padding slots included (151936 for Qwen2.5)."""
    def __len__(self) -> int: ...
    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id, or ``None``."""
    @property
    def eos_id(self) -> int | None:
        """End-of-sequence id, or ``None``."""
    @property
    def pad_id(self) -> int | None:
        """Padding id, or ``None``."""
    @property
    def eog_ids(self) -> list[int]:
        """Ids that end generation (eos, eot, ``<|im_end|>``, ``<|endoftext|>`` ...), sorted."""
    @property
    def add_bos(self) -> bool:
        """Whether ``encode(add_special_tokens=True)`` prepends BOS."""
    @property
    def chat_template(self) -> str | None:
        """The GGUF's ``tokenizer.chat_template`` source, or ``None``."""
    @property
    def pre_tokenizer(self) -> Literal["qwen2", "llama-bpe", "gpt2"]:
        """The pre-tokenizer in use."""
    def apply_chat_template(
        self,
        messages: Sequence[_Message],
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Renders the GGUF's chat template like transformers'
        ``apply_chat_template(tokenize=False)``. Encode the result with ``encode(text)``.

        >>> tok.apply_chat_template([{"role": "user", "content": "hi"}])
        '<|im_start|>system\\nYou are Qwen, ...<|im_end|>\\n<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
        """
    def decoder(self, skip_special_tokens: bool = False) -> IncrementalDecoder:
        """A streaming decoder that never emits half a UTF-8 character.

        >>> d = tok.decoder()
        >>> "".join(d.push(i) for i in tok.encode("naïve 🤖")) + d.flush()
        'naïve 🤖'
        """

@final
class IncrementalDecoder:
    """Streams text out of token ids without splitting a UTF-8 character (from
    ``Tokenizer.decoder()``; not constructible from Python)."""

    def push(self, id: int) -> str:
        """Adds one id; returns the newly completed text ("" while a character is partial)."""
    def flush(self) -> str:
        """Ends the stream (a trailing partial character becomes U+FFFD); reusable afterwards."""
    @property
    def pending(self) -> bytes:
        """Bytes held back waiting for the rest of a character."""

# ---------------------------------------------------------------------------------------------
# Sampling (src/python/sampling.rs)
# ---------------------------------------------------------------------------------------------

@final
class Sampler:
    """The host sampler on its own: penalties, then greedy when ``temperature == 0``, else
    temperature, top-k, top-p, min-p and a seeded draw (the engine's draw on every device). The
    defaults disable every processor (plain sampling at temperature 1).

    >>> s = ferrite.Sampler(5, temperature=0.5, top_k=2, seed=1)
    >>> s.process(np.array([0, 3, 1, 2, -1], dtype=np.float32))
    array([-inf,   6., -inf,   4., -inf], dtype=float32)
    """

    def __new__(
        cls,
        vocab_size: int,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int = 0,
        prompt_token_ids: Sequence[int] = ...,
    ) -> Self: ...
    def process(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The processed logits of the tokens the filters keep, ``-inf`` elsewhere; does not
        change the sampler. ``logits``: float32 ``[vocab_size]``."""
    def sample(self, logits: npt.NDArray[np.float32]) -> int:
        """Chooses a token from a float32 row of ``vocab_size`` logits and accepts it."""
    def accept(self, token_id: int) -> None:
        """Adds a token to the history the penalties read."""

def _sample_rows(
    logits: npt.NDArray[np.float32],
    *,
    device: _Device = "cpu",
    seeds: Sequence[int],
    draw_indices: Sequence[int],
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    prompt_token_ids: Sequence[int] = ...,
    output_token_ids: Sequence[int] = ...,
    logprobs: int | None = None,
) -> tuple[list[int], list[float] | None, list[list[tuple[int, float]]] | None]:
    """Test hook: the engine's draw of one token per row on ``device`` (private)."""

# ---------------------------------------------------------------------------------------------
# The engine (src/python/engine.rs, results.rs)
# ---------------------------------------------------------------------------------------------

_FinishReason = Literal["eos", "stop", "length", "cancelled", "error"]

@final
class Timings:
    """One request's own times and token counts (not its batch's). Compares by value, pickles.

    >>> r.timings.time_to_first_token_s, r.timings.decode_tok_s
    """

    def __new__(
        cls,
        prompt_tokens: int = 0,
        cached_prompt_tokens: int = 0,
        queue_s: float = 0.0,
        time_to_first_token_s: float = 0.0,
        prefill_s: float = 0.0,
        decode_tokens: int = 0,
        decode_s: float = 0.0,
        total_s: float = 0.0,
    ) -> Self: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def cached_prompt_tokens(self) -> int:
        """Prompt tokens whose KV came from the prefix cache."""
    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens computed (``prompt_tokens - cached_prompt_tokens``)."""
    @property
    def queue_s(self) -> float:
        """Submission to admission into the running batch."""
    @property
    def time_to_first_token_s(self) -> float:
        """Submission to the first generated token."""
    @property
    def prefill_s(self) -> float:
        """Admission to the first generated token."""
    @property
    def prefill_tok_s(self) -> float: ...
    @property
    def decode_tokens(self) -> int:
        """Tokens generated after the first."""
    @property
    def decode_s(self) -> float:
        """First generated token to the last."""
    @property
    def decode_tok_s(self) -> float: ...
    @property
    def total_s(self) -> float: ...
    def as_dict(self) -> dict[str, float]:
        """The timings as a plain dict (for JSON)."""
    def __eq__(self, value: object, /) -> bool: ...
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]: ...

@final
class GenerationResult:
    """One finished generation. Compares by value, pickles.

    >>> r = gen.generate("1, 2, 3,", max_tokens=8, temperature=0, logprobs=2)
    >>> r.finish_reason, r.timings.decode_tok_s, r.top_logprobs[0]
    """

    def __new__(
        cls,
        text: str,
        token_ids: Sequence[int],
        prompt_token_ids: Sequence[int],
        finish_reason: str,
        seed: int,
        logprobs: Sequence[float] | None = None,
        top_logprobs: Sequence[Sequence[tuple[int, float]]] | None = None,
        error: str | None = None,
        timings: Timings | None = None,
    ) -> Self: ...
    @property
    def text(self) -> str:
        """The generated text, without the ending token's text or a stop string."""
    @property
    def token_ids(self) -> list[int]:
        """Generated ids, including the token that ended generation."""
    @property
    def prompt_token_ids(self) -> list[int]: ...
    @property
    def finish_reason(self) -> _FinishReason: ...
    @property
    def seed(self) -> int:
        """The seed actually used (taken from the clock when ``seed=None``)."""
    @property
    def logprobs(self) -> list[float] | None:
        """Each generated token's log-probability, when asked for."""
    @property
    def top_logprobs(self) -> list[list[tuple[int, float]]] | None:
        """Per generated token, the k best ``(token_id, logprob)``, best first, when k >= 1."""
    @property
    def error(self) -> str | None:
        """Why it failed, when ``finish_reason == "error"``."""
    @property
    def timings(self) -> Timings: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]: ...

@final
class RequestOutput:
    """What one engine step produced for one request.

    >>> out = req.next(); out.token_ids, out.text, out.finish_reason
    """

    @property
    def request_id(self) -> int: ...
    @property
    def token_ids(self) -> list[int]:
        """Tokens drawn in this step (normally one; none for a cancellation)."""
    @property
    def text(self) -> str:
        """Text that became final: whole characters, never part of a stop string."""
    @property
    def logprobs(self) -> list[float] | None: ...
    @property
    def top_logprobs(self) -> list[list[tuple[int, float]]] | None: ...
    @property
    def finish_reason(self) -> _FinishReason | None:
        """``None`` while the request runs."""
    @property
    def error(self) -> str | None: ...

@final
class Request:
    """A submitted request: iterate it (or ``next()``) for its outputs, ``poll()`` without
    waiting, ``result()`` once finished, ``cancel()`` to stop it (dropping it does too).

    >>> req = engine.submit("The capital of France is", max_tokens=8, temperature=0)
    >>> "".join(out.text for out in req); req.result().finish_reason
    """

    @property
    def id(self) -> int: ...
    @property
    def prompt_token_ids(self) -> list[int]: ...
    @property
    def seed(self) -> int: ...
    @property
    def finished(self) -> bool: ...
    def poll(self) -> list[RequestOutput]:
        """The outputs produced since the last ``poll``/``next``, without waiting."""
    def next(self, timeout: float | None = None) -> RequestOutput | None:
        """The next output (driving the engine when no other thread does); ``None`` once every
        output was taken or when ``timeout`` seconds pass. The GIL is released while waiting."""
    def result(self) -> GenerationResult:
        """The whole generation once finished; ``RuntimeError`` before."""
    def cancel(self) -> None:
        """Stops it and frees its KV room; its last output has ``finish_reason == "cancelled"``."""
    def __iter__(self) -> Self: ...
    def __next__(self) -> RequestOutput: ...

@final
class Engine:
    """The generation engine of a ``Model``: requests in, tokens out, every request of every
    thread batched together (continuous batching, paged KV cache with prefix reuse, sampling on
    the model's device). One engine per model, shared by all its users.

    >>> engine = ferrite.Engine(model, tokenizer)
    >>> req = engine.submit([{"role": "user", "content": "Hi!"}], max_tokens=16, temperature=0)
    """

    def __new__(cls, model: Model, tokenizer: Tokenizer) -> Self: ...
    def submit(
        self,
        prompt: _Prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Request:
        """Queues one prompt; every argument is checked here (``ValueError``,
        ``ContextLengthError``), never later inside a step."""
    def step(self) -> list[int]:
        """Runs one step if there is work; the ids of the requests that got output."""
    def wait_for_work(self, timeout: float) -> bool:
        """Waits until a request is queued or running, or ``timeout`` seconds pass."""
    def has_work(self) -> bool: ...
    def stats(self) -> dict[str, float]:
        """``running``, ``waiting``, ``kv_blocks_total``, ``kv_blocks_used``, ``kv_block_tokens``,
        ``kv_tokens_used``, ``steps``, ``last_step_s``, ``step_s_total``, ``prompt_tokens``,
        ``cached_prompt_tokens``, ``generated_tokens``, ``preemptions``, ``requests_finished``."""
    @property
    def model(self) -> Model: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def kv_cache_tokens(self) -> int: ...
    @property
    def kv_cache_dtype(self) -> _KvDtype:
        """What the KV cache stores keys and values as: the model's ``kv_cache_dtype``."""

# ---------------------------------------------------------------------------------------------
# Generation (src/python/generator.rs)
# ---------------------------------------------------------------------------------------------

@final
class TextStream:
    """Iterator of text pieces returned by ``Generator.stream``; ``result`` is the
    ``GenerationResult`` once it is exhausted. Closing or dropping it cancels the request.

    >>> it = gen.stream("def fib(n):", max_tokens=32)
    >>> text = "".join(it); it.result.finish_reason
    """

    def __iter__(self) -> Self: ...
    def __next__(self) -> str: ...
    @property
    def result(self) -> GenerationResult | None:
        """The ``GenerationResult`` once the stream is exhausted; ``None`` before."""
    @property
    def last_output(self) -> RequestOutput | None:
        """The ``RequestOutput`` behind the latest piece (its tokens and logprobs)."""
    def close(self) -> None:
        """Stops generating and frees the KV cache."""

@final
class Generator:
    """Text generation with a ``Model`` and its ``Tokenizer``, over the model's engine. A prompt
    is a str (raw text), a list of message dicts (one conversation, rendered with the chat
    template), or a list of token ids; a list of prompts is a batch and returns a list of results
    in order.

    >>> gen = ferrite.Generator.from_gguf(path)
    >>> gen.generate([{"role": "user", "content": "Say hi"}], max_tokens=16, temperature=0).text
    """

    def __new__(cls, model: Model, tokenizer: Tokenizer, *, max_batch: int | None = None) -> Self: ...
    @staticmethod
    def from_gguf(
        path: _StrPath | GgufFile,
        *,
        device: _Device = "auto",
        max_batch: int = 64,
        kv_cache_tokens: int | None = None,
        exact_matmul: bool = False,
        max_step_tokens: int | None = None,
        prefix_caching: bool = True,
        threads: int | None = None,
        kv_cache_dtype: _KvDtype = "float32",
    ) -> Generator:
        """``Model.load`` and ``Tokenizer.from_gguf`` of one file in one call."""
    @property
    def model(self) -> Model: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def max_batch(self) -> int: ...
    # A str is also a Sequence[str]; the first overload wins for it (list and tuple prompts only,
    # as at run time).
    @overload
    def generate(  # type: ignore[overload-overlap]
        self,
        prompt: str | Sequence[_Message] | Sequence[int],
        *,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        progress: bool = False,
    ) -> GenerationResult: ...
    @overload
    def generate(
        self,
        prompt: Sequence[str] | Sequence[Sequence[_Message]] | Sequence[Sequence[int]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        progress: bool = False,
    ) -> list[GenerationResult]: ...
    def stream(
        self,
        prompt: _Prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        logprobs: int | None = None,
        ignore_eos: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> TextStream:
        """Streams the generation of ONE prompt as text pieces (whole characters, never part of
        a stop string).

        >>> for piece in gen.stream("def fib(n):", max_tokens=32, temperature=0):
        ...     print(piece, end="", flush=True)
        """

# ---------------------------------------------------------------------------------------------
# CUDA (src/python/cuda.rs)
# ---------------------------------------------------------------------------------------------

@final
class DeviceTensor:
    """A float32 tensor in GPU memory; ``torch.from_dlpack(t)`` and ``cupy.from_dlpack(t)`` take
    it without a copy and keep it alive; ``t.numpy()`` copies it to the host.

    >>> w = torch.from_dlpack(f.device_tensor("blk.0.ffn_down.weight"))
    """

    @property
    def shape(self) -> list[int]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def nbytes(self) -> int: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any: ...
    def numpy(self) -> npt.NDArray[np.float32]: ...

def cuda_available() -> bool:
    """True when an NVIDIA driver is installed and a CUDA device is visible. Never raises."""

def cuda_device_count() -> int:
    """Number of visible CUDA devices; 0 without a driver. Never raises."""

def cuda_device_info(device: _Device = "cuda") -> dict[str, Any]:
    """Facts about a CUDA device: ``name``, ``device``, ``compute_capability`` (tuple), ``arch``
    (``"sm_90"``), ``total_memory_bytes``, ``free_memory_bytes``, ``driver_version``,
    ``nvrtc_version`` (tuple or None), ``kernel_cache_dir``, ``prebuilt_kernels`` (whether the
    kernels compiled ahead of time serve this device and NVRTC), ``kernels_compiled`` (kernel
    modules NVRTC has compiled in this process). Raises ``CudaError`` when there is no such
    device.

    >>> ferrite.cuda_device_info("cuda:0")["arch"]
    'sm_90'
    """

# Test hooks (private; used by tests/test_cuda_* and scripts/gpu_*).
def _cuda_dequantize_poisoned(
    raw: _RawBytes,
    ggml_type: _GgmlType,
    n_elems: int,
    poison_bits: int,
    src_offset_bytes: int = 0,
    device: _Device = "cuda",
) -> npt.NDArray[np.float32]: ...
def _cuda_upload_bandwidth(n_bytes: int = ..., device: _Device = "cuda") -> tuple[float, float]: ...  # n_bytes: 256 MiB
def _cuda_try_alloc(n_bytes: int, device: _Device = "cuda") -> None: ...
def _cuda_fault_selftest(device: _Device = "cuda") -> None: ...
def _cuda_matvec(
    raw: _RawBytes,
    ggml_type: _GgmlType,
    n_rows: int,
    n_cols: int,
    x: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None = None,
    path: str = "auto",
    poison_bits: int = ...,
    device: _Device = "cuda",
    accumulate_onto: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]: ...
def _cuda_matvecs(
    raws: Sequence[_RawBytes],
    ggml_type: _GgmlType | Sequence[_GgmlType],
    n_rows: Sequence[int],
    n_cols: int,
    x: npt.NDArray[np.float32],
    biases: Sequence[npt.NDArray[np.float32] | None] | None = None,
    norm_weight: npt.NDArray[np.float32] | None = None,
    norm_eps: float = 1e-6,
    swiglu_up: npt.NDArray[np.float32] | None = None,
    poison_bits: int = ...,
    device: _Device = "cuda",
) -> list[npt.NDArray[np.float32]]: ...
def _cuda_weight_rows(
    raw: _RawBytes,
    ggml_type: _GgmlType,
    n_rows: int,
    n_cols: int,
    row0: int,
    n: int,
    tokens: Sequence[int],
    path: str = "auto",
    device: _Device = "cuda",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
def _cuda_matvec_time(
    raw: _RawBytes,
    ggml_type: _GgmlType,
    n_rows: int,
    n_cols: int,
    n_xs: Sequence[int],
    path: str,
    copies: int,
    iters: int,
    repeats: int = 5,
    device: _Device = "cuda",
) -> dict[str, Any]: ...
def _cuda_copy_time(n_bytes: int = ..., repeats: int = 10, device: _Device = "cuda") -> list[float]: ...
def _cuda_matvec_force_plan(warps_m: int | None = None, warps_k: int | None = None, splits: int | None = None) -> None: ...
def _cuda_matvec_stream(mode: Literal["off", "large", "one-phase", "always"]) -> str: ...
def _cuda_matvec_stream_rows(rows: int) -> int: ...
def _cuda_int8_max_rows(ty: str) -> int: ...
def _cuda_counters() -> dict[str, int]: ...
def _cuda_row_op(
    op: str,
    a: npt.NDArray[np.float32],
    b: npt.NDArray[np.float32],
    eps: float = 1e-6,
    device: _Device = "cuda",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint16], float]: ...
def _cuda_gemm_f16(
    w: npt.NDArray[np.uint16],
    x: npt.NDArray[np.uint16],
    alpha: float = 1.0,
    accumulate_onto: npt.NDArray[np.float32] | None = None,
    path: str = "rows",
    device: _Device = "cuda",
) -> npt.NDArray[np.float32]: ...
def _cuda_gemm_f16_norm(
    w: npt.NDArray[np.uint16],
    x: npt.NDArray[np.uint16],
    start: npt.NDArray[np.float32],
    alpha: float,
    w_next: npt.NDArray[np.uint16],
    alpha_next: float,
    eps: float,
    device: _Device = "cuda",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint16], npt.NDArray[np.float32]]: ...
