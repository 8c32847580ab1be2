"""One exception class per kind of mistake, wherever it is made (docs/ERRORS.md), each a subclass
of the builtin a generic handler would catch it by."""

import pytest

import ferrite
from synthetic_model import write_tiny_model

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = ferrite.Tokenizer.from_gguf(ferrite.fetch_test_model())
    path = write_tiny_model(tmp_path_factory.mktemp("errors") / "tiny.gguf", arch="qwen2", biases=True, vocab=tok.vocab_size, context=64)
    model = ferrite.Model.load(path, device="cpu")
    return tok, model, ferrite.Engine(model, tok), ferrite.Generator(model, tok)


def test_a_token_id_out_of_range_is_invalid_token_error_everywhere(setup):
    tok, model, engine, gen = setup
    bad = tok.vocab_size + 5
    sites = [
        lambda: model.forward([1, bad]),
        lambda: model.forward_batch([[1], [bad]]),
        lambda: tok.decode([bad]),
        lambda: tok.id_to_token(bad),
        lambda: tok.decoder().push(bad),
        lambda: ferrite.Sampler(100, prompt_token_ids=[100]),
        lambda: ferrite.Sampler(100).accept(-1),
        lambda: engine.submit([1, bad]),
        lambda: engine.submit("hi", stop_token_ids=[bad]),
        lambda: gen.generate([[bad]]),
    ]
    for i, site in enumerate(sites):
        with pytest.raises(ferrite.InvalidTokenError) as e:
            site()
        assert isinstance(e.value, IndexError) and isinstance(e.value, ValueError), i
        assert "out of range" in str(e.value), (i, str(e.value))


def test_a_sampling_parameter_out_of_range_is_sampling_parameter_error_everywhere(setup):
    tok, model, engine, gen = setup
    sites = [
        lambda: ferrite.Sampler(10, temperature=-1),
        lambda: engine.submit("hi", temperature=-1),
        lambda: engine.submit("hi", top_p=0),
        lambda: engine.submit("hi", max_tokens=-5),
        lambda: engine.submit("hi", logprobs=21),
        lambda: gen.generate("hi", min_p=2),
        lambda: gen.stream("hi", top_k=-1),
    ]
    for i, site in enumerate(sites):
        with pytest.raises(ferrite.SamplingParameterError) as e:
            site()
        assert isinstance(e.value, ValueError), i


def test_context_overflow_is_context_length_error_everywhere(setup):
    tok, model, engine, gen = setup
    long = [1] * 65
    for site in (lambda: model.forward(long), lambda: engine.submit(long), lambda: gen.generate([long])):
        with pytest.raises(ferrite.ContextLengthError) as e:
            site()
        assert isinstance(e.value, ValueError)


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ferrite.GgufError, match="bad.gguf"):
        ferrite.GgufFile(bad)
    with pytest.raises(FileNotFoundError):
        ferrite.GgufFile(tmp_path / "missing.gguf")
    with pytest.raises(ferrite.UnsupportedTypeError) as e:
        ferrite.dequantize(b"\0" * 36, "Q8_1", (32,))
    assert isinstance(e.value, NotImplementedError)
    assert issubclass(ferrite.CudaOutOfMemoryError, MemoryError) and issubclass(ferrite.CudaError, RuntimeError)
