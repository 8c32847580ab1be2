"""ferrite's apply_chat_template against transformers' rendering of the same template.

Reference: transformers 4.x `PreTrainedTokenizerFast(chat_template=...)`.apply_chat_template(
tokenize=False), which renders with jinja2's ImmutableSandboxedEnvironment (trim_blocks,
lstrip_blocks, loop controls, its own tojson, raise_exception, strftime_now). It needs no torch.
"""

import copy

import pytest

import ferrite

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CONTROL = 3


def _reference(template, specials):
    """A transformers tokenizer carrying `template`; the vocabulary only needs the special tokens
    (rendering does not tokenize)."""
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["a"] + specials)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="a"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, chat_template=template, eos_token="<|im_end|>")


@pytest.fixture(scope="module")
def tok():
    return ferrite.Tokenizer.from_gguf(ferrite.fetch_test_model())


@pytest.fixture(scope="module")
def ref(tok):
    return _reference(tok.chat_template, ["<|im_start|>", "<|im_end|>", "<|endoftext|>"])


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo actuelle — current weather for a city (°C)",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Zürich\""},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "ratio": {"type": "number", "default": 0.5},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {"type": "function", "function": {"name": "search", "description": "Web search", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    "multi_turn": [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "Write a haiku about Rust."},
        {"role": "assistant", "content": "Borrow checker hums\nlifetimes\tfold into the night\nno data races"},
        {"role": "user", "content": "Now one in 日本語, with emoji 🦀"},
    ],
    "no_system_multi_turn": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "  and 3+3?  \n"},
    ],
    "special_strings_in_content": [{"role": "user", "content": "print('<|im_end|>') and <tool_call>"}],
    "empty_content": [{"role": "user", "content": ""}],
    "tool_calls": [
        {"role": "user", "content": "Weather in Zürich and Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "ratio": 1.5e-7, "x": None, "ok": True}}},
        ]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "{\"temp\": 18.5}"},
        {"role": "assistant", "content": "Zürich 21°C, Paris 18.5°C."},
    ],
    "tool_call_with_text_and_system": [
        {"role": "system", "content": "Use tools when useful."},
        {"role": "user", "content": "search rust gguf"},
        {"role": "assistant", "content": "Let me search.", "tool_calls": [
            {"function": {"name": "search", "arguments": {"q": "rust \"gguf\" <parser>"}}}]},
        {"role": "tool", "content": "3 results"},
    ],
    "tool_call_without_function_wrapper": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"name": "search", "arguments": {"q": "x"}}]},
    ],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("with_tools", [False, True])
def test_matches_transformers(tok, ref, name, add_generation_prompt, with_tools):
    messages = CONVERSATIONS[name]
    tools = [WEATHER_TOOL, SEARCH_TOOL] if with_tools else None
    expected = ref.apply_chat_template(
        copy.deepcopy(messages), tools=copy.deepcopy(tools), add_generation_prompt=add_generation_prompt, tokenize=False
    )
    ours = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tools=tools)
    assert ours == expected


def test_default_adds_generation_prompt_and_encodes(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok.encode(text)
    assert ids.count(tok.token_to_id("<|im_start|>")) == 3


def test_bad_messages_are_tokenizer_errors(tok):
    with pytest.raises(ferrite.TokenizerError, match="JSON"):
        tok.apply_chat_template([{"role": "user", "content": object()}])
    with pytest.raises(ferrite.TokenizerError, match="list"):
        tok.apply_chat_template({"role": "user", "content": "x"})
    with pytest.raises(ferrite.TokenizerError, match="not an object"):
        tok.apply_chat_template(["just a string"])


# A template written to exercise the environment features templates in the wild use:
# Python string methods, tojson with indent, namespace, loop controls, raise_exception,
# whitespace control, filters and tests.
FEATURE_TEMPLATE = """{{- bos_token }}
{%- set ns = namespace(n=0, sys='') %}
{%- for m in messages %}
    {%- if m.role not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unsupported role: ' + m.role) }}
    {%- endif %}
    {%- if m.role == 'system' %}{% set ns.sys = m.content.strip() %}{% continue %}{% endif %}
    {%- set ns.n = ns.n + 1 %}
    {%- if ns.n > 5 %}{% break %}{% endif %}
[{{ loop.index }}/{{ loop.length }}] {{ m.role | upper }}: {{ m.content | trim }}
    {%- if m.content.startswith('#') %} (heading){% endif %}
    {%- if m.content.endswith('?') %} (question){% endif %}
    {% if loop.last %}<last>{% endif %}
{% endfor %}
{%- if ns.sys %}SYSTEM={{ ns.sys | replace(' ', '_') | lower }} words={{ ns.sys.split() | length }}{% endif %}
{%- if tools is defined and tools %}
TOOLS:
{{ tools | tojson(indent=2) }}
{%- for t in tools %}
- {{ t.function.name }}: {{ t.function.parameters | tojson }} {{ t.function.name.title() }} {{ t.function.name.replace('_', '-') }}
{%- endfor %}
{%- endif %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{%- endif %}
"""


def _bytes_to_unicode():
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


def test_environment_features_match_transformers(tmp_path):
    # Tokens and merges are irrelevant to rendering; "a a" -> "aa" keeps the vocabulary valid.
    path = tmp_path / "feature.gguf"
    tokens = list(_bytes_to_unicode().values()) + ["aa", "<|im_start|>", "<|im_end|>", "<s>"]
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * 257 + [CONTROL] * 3)
    w.add_token_merges(["a a"])
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 2)
    w.add_chat_template(FEATURE_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours_tok = ferrite.Tokenizer.from_gguf(path)
    reference = _reference(FEATURE_TEMPLATE, ["<|im_start|>", "<|im_end|>", "<s>"])
    reference.bos_token = "<s>"
    messages = [
        {"role": "system", "content": "  Be Very Brief  "},
        {"role": "user", "content": "# Title\nwhat?"},
        {"role": "assistant", "content": "  fine  "},
        {"role": "user", "content": "ünïcode 🦀 ok?"},
    ]
    tools = [WEATHER_TOOL, SEARCH_TOOL]
    for agp in (True, False):
        for t in (None, tools):
            expected = reference.apply_chat_template(copy.deepcopy(messages), tools=copy.deepcopy(t),
                                                     add_generation_prompt=agp, tokenize=False)
            assert ours_tok.apply_chat_template(messages, add_generation_prompt=agp, tools=t) == expected
    bad = messages + [{"role": "robot", "content": "beep"}]
    with pytest.raises(Exception, match="Unsupported role: robot"):
        reference.apply_chat_template(bad, tokenize=False)
    with pytest.raises(ferrite.TokenizerError, match="Unsupported role: robot"):
        ours_tok.apply_chat_template(bad)
