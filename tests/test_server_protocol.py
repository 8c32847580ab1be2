"""The server's pure parts, without a model: request validation against the OpenAI API's own
field list and ranges (the ``openai`` package's request TypedDicts), response and chunk shapes
validated by the ``openai`` package's response models, SSE framing read back by the ``openai``
client's own SSE decoder, and the metrics text read back by ``prometheus_client``'s parser."""

import json
from types import SimpleNamespace

import pytest

pytest.importorskip("openai", reason="the server tests need the test extra (openai)")

from openai.types import Completion  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402
from openai.types.chat import completion_create_params as chat_params  # noqa: E402
from openai.types import completion_create_params as completion_params  # noqa: E402

from ferrite.server import responses as R  # noqa: E402
from ferrite.server import sse  # noqa: E402
from ferrite.server.errors import APIError  # noqa: E402
from ferrite.server.metrics import Metrics  # noqa: E402
from ferrite.server.protocol import (  # noqa: E402
    parse_chat_request,
    parse_completion_request,
    parse_detokenize_request,
    parse_tokenize_request,
)

USER = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return parse_chat_request({"model": "m", "messages": USER, **fields})


def refused(parse, body, param):
    with pytest.raises(APIError) as e:
        parse(body)
    err = e.value
    assert err.status == 400
    body = err.body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert err.param == param, err.message
    assert param.split("[")[0].split(".")[0] in err.message
    return err


# --- every field of the API is honoured, accepted as informational, or refused by name -------


def _api_fields(module):
    fields = set()
    for cls in (module.CompletionCreateParamsBase,):
        for klass in cls.__mro__:
            fields |= set(getattr(klass, "__annotations__", {}))
    return fields


HONOURED_CHAT = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
                 "stop", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "n", "stream",
                 "stream_options", "tools", "tool_choice", "parallel_tool_calls"}
INFORMATIONAL = {"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key"}

# A value of each field the server cannot honour, as a client would send it.
NOT_HONOURED_VALUES = {
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    "logit_bias": {"50256": -100},
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": "auto",
    "audio": {"voice": "alloy", "format": "mp3"},
    "modalities": ["text", "audio"],
    "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "low",
    "web_search_options": {},
    "verbosity": "low",
    "echo": True,
    "suffix": "end",
    "best_of": 3,
}


def test_every_chat_field_of_the_api_is_honoured_informational_or_refused_by_name():
    fields = _api_fields(chat_params)
    assert {"messages", "model", "temperature", "response_format"} <= fields  # the reference is read
    unknown = fields - HONOURED_CHAT - INFORMATIONAL - set(NOT_HONOURED_VALUES)
    for name in sorted(unknown):
        # A field added to the API after this server was written: it must be refused, by name.
        refused(parse_chat_request, {"messages": USER, name: "x"}, name)
    for name in sorted(fields & set(NOT_HONOURED_VALUES)):
        err = refused(parse_chat_request, {"messages": USER, name: NOT_HONOURED_VALUES[name]}, name)
        assert err.code == "unsupported_parameter"
    for name in sorted(fields & INFORMATIONAL):
        parse_chat_request({"messages": USER, name: None})


def test_every_completion_field_of_the_api_is_honoured_or_refused_by_name():
    fields = _api_fields(completion_params)
    honoured = {"model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty",
                "frequency_penalty", "logprobs", "n", "stream", "stream_options"}
    for name in sorted(fields - honoured - INFORMATIONAL):
        value = NOT_HONOURED_VALUES.get(name, "x")
        refused(parse_completion_request, {"prompt": "a", name: value}, name)
    # The API's defaults of the fields we do not implement are accepted: SDKs send them.
    parse_completion_request({"prompt": "a", "echo": False, "best_of": 1, "suffix": None, "logit_bias": {}})
    chat(response_format={"type": "text"}, logit_bias={})


def test_unknown_fields_are_refused_by_name():
    err = refused(parse_chat_request, {"messages": USER, "temprature": 0.5}, "temprature")
    assert err.code == "unknown_parameter"


# --- ranges from the API reference ------------------------------------------------------------


@pytest.mark.parametrize("name,bad,good", [
    ("temperature", [-0.1, 2.01, "hot", True], [0, 2, 0.7]),
    ("top_p", [0, -0.5, 1.01], [1, 0.01]),
    ("presence_penalty", [-2.5, 2.5], [-2, 2, 0]),
    ("frequency_penalty", [-2.01, 3], [-2, 1.5]),
    ("n", [0, -1, 129, 1.5, "2"], [1, 4, 128]),
    ("max_tokens", [-1, 1.5, "9"], [0, 1, 100]),
    ("max_completion_tokens", [-1, True], [5]),
    ("seed", [1.5, "1", 1 << 64], [0, -1, (1 << 64) - 1]),
    ("top_logprobs", [-1, 21], [0, 20]),
    ("top_k", [-2, 0.5], [-1, 0, 50]),
    ("min_p", [-0.1, 1.5], [0, 0.05, 1]),
    ("repetition_penalty", [0, -1], [0.5, 1, 1.3]),
])
def test_numeric_ranges(name, bad, good):
    extra = {"logprobs": True} if name == "top_logprobs" else {}
    for v in bad:
        refused(parse_chat_request, {"messages": USER, name: v, **extra}, name)
    for v in good:
        parse_chat_request({"messages": USER, name: v, **extra})


def test_defaults_are_the_apis():
    s = chat().sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.max_tokens, s.logprobs) == (1.0, 1.0, 0, 0.0, None, None)
    assert parse_completion_request({"prompt": "a"}).sampling.max_tokens == 16  # the legacy API's default
    r = chat()
    assert (r.n, r.stream, r.include_usage, r.tools, r.logprobs) == (1, False, False, None, False)


def test_sampling_reaches_the_engine_and_choices_get_their_own_seeds():
    r = chat(temperature=0, top_p=0.5, seed=7, stop="END", max_completion_tokens=9, top_k=3, min_p=0.1,
             repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=-0.5, logprobs=True, top_logprobs=2)
    kw = r.sampling.engine_kwargs(9, 0)
    assert kw == dict(max_tokens=9, temperature=0.0, top_k=3, top_p=0.5, min_p=0.1, repetition_penalty=1.1,
                      presence_penalty=0.5, frequency_penalty=-0.5, seed=7, stop=["END"], stop_token_ids=[],
                      logprobs=2, ignore_eos=False)
    assert r.sampling.engine_kwargs(9, 1)["seed"] == 8
    assert chat(seed=-1).sampling.engine_kwargs(1, 1)["seed"] == 0  # two's complement, wrapped
    assert chat(logprobs=True).sampling.logprobs == 0  # the chosen token's logprob only
    assert chat(max_tokens=5).sampling.max_tokens == 5
    refused(parse_chat_request, {"messages": USER, "max_tokens": 5, "max_completion_tokens": 6}, "max_tokens")


def test_stop_and_stream_options():
    assert chat(stop=["a", "b"]).sampling.stop == ["a", "b"]
    refused(parse_chat_request, {"messages": USER, "stop": [""]}, "stop")
    refused(parse_chat_request, {"messages": USER, "stop": [1]}, "stop")
    refused(parse_chat_request, {"messages": USER, "stop": ["x"] * 17}, "stop")
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage
    refused(parse_chat_request, {"messages": USER, "stream_options": {"include_usage": True}}, "stream_options")
    refused(parse_chat_request, {"messages": USER, "stream": True, "stream_options": {"x": 1}},
            "stream_options.x")
    refused(parse_chat_request, {"messages": USER, "top_logprobs": 2}, "top_logprobs")


# --- messages ----------------------------------------------------------------------------------


def test_messages():
    r = chat(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ])
    assert r.messages[0] == {"role": "system", "content": "be brief"}
    assert r.messages[1]["content"] == "a\nb"
    assert r.messages[2]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert r.messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "2"}
    refused(parse_chat_request, {"messages": []}, "messages")
    refused(parse_chat_request, {}, "messages")
    refused(parse_chat_request, {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role")
    refused(parse_chat_request, {"messages": [{"role": "user"}]}, "messages[0].content")
    refused(parse_chat_request, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content")
    err = refused(parse_chat_request, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "messages[0].content[0]")
    assert "image_url" in err.message


def test_tools_pass_through_and_tool_choice():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat(tools=tools).tools == tools
    assert chat(tools=tools, tool_choice="auto").tools == tools
    assert chat(tools=tools, tool_choice="none").tools is None
    refused(parse_chat_request, {"messages": USER, "tools": tools, "tool_choice": "required"}, "tool_choice")
    refused(parse_chat_request, {"messages": USER, "tools": "f"}, "tools")


def test_body_must_be_an_object_and_model_a_string():
    with pytest.raises(APIError) as e:
        parse_chat_request([1, 2])
    assert e.value.status == 400
    refused(parse_chat_request, {"messages": USER, "model": 3}, "model")


# --- completions -------------------------------------------------------------------------------


def test_completion_prompt_forms():
    assert parse_completion_request({"prompt": "a"}).prompts == ["a"]
    assert parse_completion_request({"prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert parse_completion_request({"prompt": [1, 2, 3]}, 10).prompts == [[1, 2, 3]]
    assert parse_completion_request({"prompt": [[1], [2, 3]]}, 10).prompts == [[1], [2, 3]]
    for bad in (None, [], [[]], ["a", 1], [1.5], {"x": 1}):
        refused(parse_completion_request, {"prompt": bad}, "prompt")
    refused(lambda b: parse_completion_request(b, 10), {"prompt": [3, 10]}, "prompt")
    refused(lambda b: parse_completion_request(b, 10), {"prompt": [[3], [-1]]}, "prompt")
    r = parse_completion_request({"prompt": "a", "logprobs": 3, "n": 2, "best_of": 2})
    assert (r.sampling.logprobs, r.n) == (3, 2)
    refused(parse_completion_request, {"prompt": "a", "logprobs": 21}, "logprobs")


def test_tokenize_and_detokenize_bodies():
    assert parse_tokenize_request({"prompt": "x"}).prompt == "x"
    assert parse_tokenize_request({"messages": USER}).messages == USER
    refused(parse_tokenize_request, {"prompt": "x", "messages": USER}, "prompt")
    refused(parse_tokenize_request, {}, "prompt")
    assert parse_detokenize_request({"tokens": [1, 2]}, 5) == (None, [1, 2])
    refused(lambda b: parse_detokenize_request(b, 5), {"tokens": [5]}, "tokens")
    refused(lambda b: parse_detokenize_request(b, 5), {"tokens": "1"}, "tokens")


# --- response shapes, read by the openai package's own models ----------------------------------


class FakeTokenizer:
    """Token id i is the byte i (ids 0..255); enough for ``TokenPieces``."""

    def decode_bytes(self, ids):
        return bytes(ids)


def out(ids, text, finish=None, lps=None, tops=None):
    return SimpleNamespace(request_id=1, token_ids=ids, text=text, logprobs=lps, top_logprobs=tops,
                           finish_reason=finish, error=None)


def test_finish_reasons():
    assert R.finish_reason("eos") == "stop"
    assert R.finish_reason("stop") == "stop"
    assert R.finish_reason("length") == "length"
    for reason in ("cancelled", "error"):
        with pytest.raises(ValueError):
            R.finish_reason(reason)
    c = R.Choice(index=0, prompt_tokens=3)
    with pytest.raises(RuntimeError, match="boom"):
        c.add(SimpleNamespace(token_ids=[], text="", logprobs=None, top_logprobs=None, finish_reason="error",
                              error="boom"))


def test_chat_completion_and_chunks_validate_as_the_openai_types():
    pieces = R.TokenPieces(FakeTokenizer())
    c = R.Choice(index=0, prompt_tokens=4)
    deltas = [out([72], "H", lps=[-0.5], tops=[[(72, -0.5), (73, -1.5)]]),
              out([0xC3], "", lps=[-0.1], tops=[[(0xC3, -0.1)]]),  # half a character: no text yet
              out([0xA9], "é", "eos", lps=[-0.2], tops=[[(0xA9, -0.2)]])]
    chunks = []
    for d in deltas:
        c.add(d)
        chunks += R.chat_delta_chunks("id1", 5, "m", c, d, pieces, True)
    usage = R.choices_usage([c], [4])
    assert usage == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    chunks.append(R.usage_chunk("id1", 5, "m", "chat.completion.chunk", usage))
    parsed = [ChatCompletionChunk.model_validate(ch) for ch in chunks]
    assert parsed[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parsed if p.choices) == "Hé"
    assert [p.choices[0].finish_reason for p in parsed if p.choices][-1] == "stop"
    assert all(p.usage is None for p in parsed[:-1]) and parsed[-1].usage.total_tokens == 7
    assert parsed[-1].choices == []
    logprob_tokens = [t for p in parsed if p.choices and p.choices[0].logprobs for t in p.choices[0].logprobs.content]
    assert [t.bytes for t in logprob_tokens] == [[72], [0xC3], [0xA9]]
    assert logprob_tokens[1].token == "\ufffd"  # a byte that is not a character by itself
    assert [(t.token, t.logprob) for t in logprob_tokens[0].top_logprobs] == [("H", -0.5), ("I", -1.5)]

    full = ChatCompletion.model_validate(R.chat_completion("id1", 5, "m", [c], usage, pieces))
    assert full.choices[0].message.content == "Hé" and full.choices[0].finish_reason == "stop"
    assert [t.logprob for t in full.choices[0].logprobs.content] == [-0.5, -0.1, -0.2]
    assert full.usage.completion_tokens == 3
    # Without logprobs asked, no chunk for a token without text, and no usage field.
    c2 = R.Choice(index=1, prompt_tokens=4)
    c2.add(deltas[1])
    assert [ch["choices"][0]["delta"] for ch in R.chat_delta_chunks("i", 5, "m", c2, deltas[1], None, False)] == [
        {"role": "assistant", "content": ""}]


def test_completion_and_chunks_validate_as_the_openai_types():
    pieces = R.TokenPieces(FakeTokenizer())
    choices = [R.Choice(index=k, prompt_tokens=[2, 3][k // 2]) for k in range(4)]
    for k, c in enumerate(choices):
        c.add(out([65 + k], "AB"[k % 2], None, [-1.0], [[(65 + k, -1.0)]]))
        c.add(out([66], "x", "length", [-2.0], [[(66, -2.0)]]))
    usage = R.choices_usage(choices, [2, 3])
    assert usage == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
    full = Completion.model_validate(R.completion("c", 1, "m", choices, usage, pieces))
    assert [ch.text for ch in full.choices] == ["Ax", "Bx", "Ax", "Bx"]
    assert full.choices[1].logprobs.tokens == ["B", "B"]
    assert full.choices[1].logprobs.text_offset == [0, 1]
    assert full.choices[0].logprobs.top_logprobs == [{"A": -1.0}, {"B": -2.0}]
    assert full.choices[3].finish_reason == "length"
    c = R.Choice(index=0, prompt_tokens=1)
    d = out([65], "A", "stop")
    c.add(d)
    [chunk] = R.completion_delta_chunks("c", 1, "m", c, d, None, False, 0)
    parsed = Completion.model_validate(chunk)
    assert parsed.choices[0].text == "A" and parsed.choices[0].finish_reason == "stop"


# --- SSE framing, read back by the openai client's decoder --------------------------------------


def test_sse_events_decode_with_the_openai_clients_decoder():
    from openai._streaming import SSEDecoder

    payloads = [{"a": "line one\nline two", "b": "\u00e9\U0001F916"}, {"c": [1, 2]}]
    raw = b"".join(sse.event(p) for p in payloads) + sse.error_event("boom") + sse.DONE
    events = list(SSEDecoder().iter_bytes(iter([raw[i:i + 7] for i in range(0, len(raw), 7)])))
    assert [json.loads(e.data) for e in events[:2]] == payloads
    assert json.loads(events[2].data)["error"]["message"] == "boom"
    assert events[3].data == "[DONE]"
    assert all(e.event is None for e in events)


# --- metrics, read back by prometheus_client's parser --------------------------------------------


def test_metrics_text_parses_and_holds_the_counts():
    parser = pytest.importorskip("prometheus_client.parser")
    m = Metrics()
    m.count_request("/v1/chat/completions", 200)
    m.count_request("/v1/chat/completions", 200)
    m.count_request("/v1/completions", 400)
    for s in (0.002, 0.03, 20.0):
        m.observe_step(s)
    m.finish_request(1.5, 10, 4)
    m.add("client_cancelled")
    stats = dict(running=2, waiting=1, kv_blocks_total=100, kv_blocks_used=25, kv_block_tokens=16,
                 kv_tokens_used=390, steps=7, last_step_s=0.01, prompt_tokens=50, cached_prompt_tokens=16,
                 generated_tokens=70, preemptions=0, requests_finished=3)
    families = {f.name: f for f in parser.text_string_to_metric_families(m.render(stats, 8))}
    http = {(s.labels["route"], s.labels["status"]): s.value for s in families["ferrite_http_requests"].samples}
    assert http == {("/v1/chat/completions", "200"): 2, ("/v1/completions", "400"): 1}
    step = {s.labels.get("le"): s.value for s in families["ferrite_engine_step_seconds"].samples
            if s.name.endswith("_bucket")}
    assert step["0.0025"] == 1 and step["0.05"] == 2 and step["10.0"] == 2 and step["+Inf"] == 3
    assert families["ferrite_kv_cache_usage_ratio"].samples[0].value == 0.25
    assert families["ferrite_engine_requests_waiting"].samples[0].value == 1
    assert families["ferrite_requests_cancelled"].samples[0].value == 1
    assert families["ferrite_request_completion_tokens"].samples[0].value == 4
    assert families["ferrite_queue_capacity"].samples[0].value == 8
    # Before the model is loaded there are no engine figures, and the text still parses.
    assert "ferrite_kv_blocks_used" not in {f.name for f in parser.text_string_to_metric_families(m.render(None, 8))}
