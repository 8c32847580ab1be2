"""ferrite: GGUF files, every ggml tensor type as numpy, the model's own BPE tokenizer, and
Qwen2-family inference on CPU and NVIDIA GPUs.

>>> import ferrite
>>> f = ferrite.GgufFile(ferrite.fetch_test_model())
>>> f.tensor("output_norm.weight").shape
(896,)
"""

from ferrite import _ferrite
from ferrite._ferrite import (
    DeviceTensor,
    Engine,
    GenerationResult,
    Generator,
    GgufFile,
    IncrementalDecoder,
    Model,
    Request,
    RequestOutput,
    Sampler,
    TensorInfo,
    TextStream,
    Timings,
    Tokenizer,
    cuda_available,
    cuda_device_count,
    cuda_device_info,
    dequantize,
    ggml_types,
)
from ferrite._fetch import fetch_test_model
from ferrite.errors import (
    ContextLengthError,
    CudaError,
    CudaOutOfMemoryError,
    FerriteError,
    GgufError,
    InvalidTokenError,
    KeyNotFoundError,
    ModelError,
    QuantError,
    SamplingParameterError,
    TokenizerError,
    UnsupportedTypeError,
)

__version__ = _ferrite.__version__

__all__ = [
    "GgufFile",
    "DeviceTensor",
    "Model",
    "TensorInfo",
    "Tokenizer",
    "IncrementalDecoder",
    "Engine",
    "Request",
    "RequestOutput",
    "Generator",
    "GenerationResult",
    "TextStream",
    "Timings",
    "Sampler",
    "dequantize",
    "ggml_types",
    "cuda_available",
    "cuda_device_count",
    "cuda_device_info",
    "fetch_test_model",
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
