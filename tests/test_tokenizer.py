"""ferrite.Tokenizer against HF `tokenizers` built from the same GGUF's vocabulary and merges.

The reference is assembled here the way transformers' GGUF converter assembles Qwen2's: BPE over
the GGUF's tokens and merges, NFC normalizer, the Qwen2 split regex (isolated) then ByteLevel
without its own regex, ByteLevel decoder. Added tokens come from the GGUF's token_type, read with
gguf-py (independent of ferrite's reader): CONTROL -> special, USER_DEFINED -> added non-special,
which is how the original Qwen tokenizer.json declares them. transformers' converter would register
only 3 of the 22 added tokens; here every one is registered so that the comparison covers them.
"""

import json
import pathlib
import random
import unicodedata

import numpy as np
import pytest

import ferrite

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

CORPUS = pathlib.Path(__file__).parent / "data" / "tokenizer_corpus"
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The other pre-tokenizers ferrite accepts (`tokenizer.ggml.pre`), as their original
# tokenizer.json files write them: Llama 3 ("llama-bpe": digits in runs of 1-3, ignore_merges)
# and GPT-2.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(7)


@pytest.fixture(scope="module")
def model_path():
    return ferrite.fetch_test_model()


@pytest.fixture(scope="module")
def meta(model_path):
    reader = gguf.GGUFReader(model_path)
    f = reader.fields
    return {
        "tokens": list(f["tokenizer.ggml.tokens"].contents()),
        "merges": list(f["tokenizer.ggml.merges"].contents()),
        "types": list(f["tokenizer.ggml.token_type"].contents()),
        "pre": f["tokenizer.ggml.pre"].contents(),
        "bos": f["tokenizer.ggml.bos_token_id"].contents(),
        "eos": f["tokenizer.ggml.eos_token_id"].contents(),
        "pad": f["tokenizer.ggml.padding_token_id"].contents(),
    }


@pytest.fixture(scope="module")
def tok(model_path):
    return ferrite.Tokenizer.from_gguf(model_path)


def hf_reference(meta, split: str, nfc: bool, ignore_merges: bool = False):
    """HF tokenizers over the GGUF's vocabulary, merges and added tokens, with the given split
    regex (isolated, then ByteLevel without its own regex), as the original tokenizer.json files
    declare them: Qwen2 with NFC, Llama 3 with `ignore_merges`, GPT-2 plain."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    # UNUSED entries are padding slots of the embedding, not tokens: the original tokenizer.json
    # has none (Qwen2.5's ends at id 151664), so HF decodes their ids to nothing.
    vocab = {t: i for i, (t, ty) in enumerate(zip(meta["tokens"], meta["types"])) if ty != UNUSED}
    merges = [tuple(m.split(" ", 1)) for m in meta["merges"]]
    ref = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=ignore_merges))
    if nfc:
        ref.normalizer = normalizers.NFC()
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    ref.decoder = decoders.ByteLevel()
    toks, types = meta["tokens"], meta["types"]
    ref.add_special_tokens([AddedToken(toks[i], special=True, normalized=False) for i, t in enumerate(types) if t == CONTROL])
    ref.add_tokens([AddedToken(toks[i], special=False, normalized=False) for i, t in enumerate(types) if t == USER_DEFINED])
    return ref


@pytest.fixture(scope="module")
def hf(meta):
    assert meta["pre"] == "qwen2", "this reference reproduces the qwen2 pre-tokenizer"
    return hf_reference(meta, QWEN2_SPLIT, nfc=True)


def hf_encode(hf, text, parse_special):
    hf.encode_special_tokens = not parse_special
    try:
        return hf.encode(text, add_special_tokens=False).ids
    finally:
        hf.encode_special_tokens = False


def random_strings(n, seed=1234):
    """Seeded random strings mixing ASCII, whitespace, Latin-1, CJK, Hangul, combining marks,
    emoji, astral planes and the characters the split regex treats specially."""
    rng = random.Random(seed)
    pools = [
        (0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF),
        (0x900, 0x97F), (0x0E00, 0x0E7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x3000, 0x30FF),
        (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF), (0x1D400, 0x1D7FF),
        (0x10000, 0x10FFFF),
    ]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(pools)
            cp = rng.randint(lo, hi)
            if 0xD800 <= cp <= 0xDFFF:
                continue
            chars.append(chr(cp))
            if rng.random() < 0.1:
                chars.append(rng.choice([" ", "  ", "\n", "'s", "'LL", "\r\n", "\t"]))
        out.append("".join(chars))
    return out


def load_cases():
    cases = json.loads((CORPUS / "cases.json").read_text(encoding="utf-8"))
    long_doc = (CORPUS / "long_document.txt").read_bytes().decode("utf-8")
    return cases + random_strings(300) + [long_doc]


CASES = load_cases()


def test_corpus_is_substantial():
    assert len(CASES) >= 600
    assert sum(len(c.encode()) for c in CASES) > 100_000


def corpus_mismatches(ours, ref, parse_special):
    """(text, our ids, HF ids), shortened, for every corpus case where the two differ."""
    out = []
    for text in CASES:
        got = ours.encode(text, add_special_tokens=False, parse_special=parse_special)
        want = hf_encode(ref, text, parse_special)
        if got != want:
            out.append((text[:80], got[:20], want[:20]))
    return out


@pytest.mark.parametrize("parse_special", [True, False])
def test_ids_match_hf_on_whole_corpus(tok, hf, parse_special):
    mismatches = corpus_mismatches(tok, hf, parse_special)
    agreement = 1 - len(mismatches) / len(CASES)
    print(f"\n{len(CASES)} cases, {sum(len(c.encode()) for c in CASES)} bytes, parse_special={parse_special}: "
          f"agreement {agreement:.2%}")
    assert not mismatches, f"{len(mismatches)} of {len(CASES)} differ; first: {mismatches[:3]}"


@pytest.mark.parametrize("pre, split, ignore_merges", [("llama-bpe", LLAMA3_SPLIT, True), ("gpt2", GPT2_SPLIT, False)])
def test_other_pre_tokenizers_match_hf(meta, tmp_path, pre, split, ignore_merges):
    """The same vocabulary and merges under `tokenizer.ggml.pre` = llama-bpe / gpt2 (a GGUF with
    only tokenizer metadata, written by gguf-py): ferrite's split and BPE rules for those
    pre-tokenizers against HF's, on the whole corpus."""
    path = tmp_path / f"{pre}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(meta["tokens"])
    w.add_token_merges(meta["merges"])
    w.add_token_types(meta["types"])
    w.add_bos_token_id(meta["bos"])
    w.add_eos_token_id(meta["eos"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ours = ferrite.Tokenizer.from_gguf(str(path))
    ref = hf_reference(meta, split, nfc=False, ignore_merges=ignore_merges)
    mismatches = corpus_mismatches(ours, ref, parse_special=True)
    print(f"\n{pre}: {len(CASES) - len(mismatches)}/{len(CASES)} cases identical")
    assert not mismatches, f"{len(mismatches)} of {len(CASES)} differ; first: {mismatches[:3]}"
    # No normalization for these: a decomposed accent survives the round trip.
    assert ours.decode(ours.encode("cafe\u0301", add_special_tokens=False)) == "cafe\u0301"


def test_special_tokens_parsed_only_when_asked(tok):
    on = tok.encode("<|im_start|>user", parse_special=True)
    off = tok.encode("<|im_start|>user", parse_special=False)
    assert on[0] == tok.token_to_id("<|im_start|>")
    assert tok.token_to_id("<|im_start|>") not in off and len(off) > 2
    # USER_DEFINED (added, not special) tokens are matched either way, as in HF and llama.cpp.
    assert tok.encode("<tool_call>", parse_special=False) == [tok.token_to_id("<tool_call>")]


def test_encode_batch_matches_encode_and_hf(tok, hf):
    texts = CASES[:400]
    batch = tok.encode_batch(texts, add_special_tokens=False)
    assert batch == [tok.encode(t, add_special_tokens=False) for t in texts]
    assert batch == [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


@pytest.mark.parametrize("skip", [False, True])
def test_decode_matches_hf_and_round_trips(tok, hf, skip):
    for text in CASES:
        ids = tok.encode(text)
        ours = tok.decode(ids, skip_special_tokens=skip)
        assert ours == hf.decode(ids, skip_special_tokens=skip), text[:80]
        if not skip:
            # Lossless up to the NFC normalization encoding applies (e.g. "cafe\u0301" -> "café").
            assert ours == unicodedata.normalize("NFC", text), text[:80]
            assert tok.decode_bytes(ids) == ours.encode("utf-8")


def test_whole_vocabulary_round_trips(tok, hf, meta):
    tokens, types = meta["tokens"], meta["types"]
    assert tok.vocab_size == len(tok) == len(tokens)
    for i, t in enumerate(tokens):
        assert tok.id_to_token(i) == t
        assert tok.token_to_id(t) == i
    # Each id alone decodes like HF (partial UTF-8 -> U+FFFD); added tokens as their text.
    ours = [tok.decode([i]) for i in range(len(tokens))]
    ref = hf.decode_batch([[i] for i in range(len(tokens))], skip_special_tokens=False)
    bad = [i for i in range(len(tokens)) if ours[i] != ref[i]]
    assert not bad, [(i, ours[i], ref[i]) for i in bad[:5]]


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte (openai/gpt-2 encoder.py `bytes_to_unicode`), inverted."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def llama_cpp_piece(text: str, ty: int, special: bool, byte_decoder: dict[str, int]) -> bytes:
    """llama.cpp's `llama_vocab::token_to_piece` for a BPE vocabulary, rewritten from its rule:
    UNKNOWN and CONTROL tokens give their text only when `special`, USER_DEFINED always, NORMAL
    through the GPT-2 byte map, BYTE tokens (`<0xNN>`) their byte, anything else (UNUSED,
    UNDEFINED) nothing."""
    if ty in (UNKNOWN, CONTROL):
        return text.encode() if special else b""
    if ty == USER_DEFINED:
        return text.encode()
    if ty == NORMAL:
        return bytes(byte_decoder[c] for c in text)
    if ty == BYTE:
        return bytes([int(text[3:5], 16)])
    return b""


@pytest.mark.parametrize("special", [True, False])
def test_every_token_decodes_by_its_type_like_llama_cpp(tok, meta, special):
    tokens, types = meta["tokens"], meta["types"]
    assert {UNUSED, CONTROL, USER_DEFINED, NORMAL} <= set(types), "the real vocabulary has each of these"
    byte_decoder = gpt2_byte_decoder()
    skip = not special
    bad = [i for i, (t, ty) in enumerate(zip(tokens, types))
           if tok.decode_bytes([i], skip_special_tokens=skip) != llama_cpp_piece(t, ty, special, byte_decoder)]
    assert not bad, [(i, tokens[i], types[i], tok.decode_bytes([i], skip_special_tokens=skip)) for i in bad[:5]]
    # The padding slots in particular: nothing, alone or inside text, streamed or not.
    pad = types.index(UNUSED)
    assert tokens[pad] == f"[PAD{pad}]" and tok.decode([pad]) == ""
    ids = tok.encode("a<|im_end|>b") + [pad]
    d = tok.decoder(skip_special_tokens=skip)
    streamed = "".join(d.push(i) for i in ids) + d.flush()
    assert streamed == tok.decode(ids, skip_special_tokens=skip) == ("a<|im_end|>b" if special else "ab")


def test_special_ids_follow_gguf_metadata(tok, meta):
    types = meta["types"]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (meta["bos"], meta["eos"], meta["pad"])
    assert meta["eos"] in tok.eog_ids
    assert tok.token_to_id("<|im_end|>") in tok.eog_ids and tok.token_to_id("<|endoftext|>") in tok.eog_ids
    assert all(tok.is_special(i) == (t == CONTROL) for i, t in enumerate(types))
    # skip_special_tokens drops exactly the CONTROL tokens.
    added = [i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)]
    kept = tok.decode(added, skip_special_tokens=True)
    assert kept == "".join(meta["tokens"][i] for i in added if types[i] == USER_DEFINED)


def test_incremental_decoder_streams_whole_characters(tok):
    split_chars = 0
    for text in CASES:
        ids = tok.encode(text)
        d = tok.decoder()
        pieces = [d.push(i) for i in ids]
        pieces.append(d.flush())
        assert "".join(pieces) == tok.decode(ids), text[:80]
        for i, piece in zip(ids, pieces):
            # Valid text never streams a replacement character: partial bytes are held back.
            assert "\ufffd" not in piece or "\ufffd" in text
            raw = tok.decode_bytes([i])
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                split_chars += 1
    assert split_chars > 50, "the corpus should contain characters split across tokens"


def test_incremental_decoder_holds_partial_character(tok):
    # A rare CJK character is several byte-level tokens; find one and stream it byte by byte.
    for ch in "龘𠀀🦀ꙮ":
        ids = tok.encode(ch)
        if len(ids) > 1:
            break
    else:
        pytest.fail("expected some character to need several tokens")
    d = tok.decoder()
    outs = [d.push(i) for i in ids]
    assert outs[:-1] == [""] * (len(ids) - 1) and outs[-1] == ch
    assert d.pending == b"" and d.flush() == ""
    # Cut short: the held bytes are reported and flushed as U+FFFD, like decode().
    d.push(ids[0])
    assert d.pending == tok.decode_bytes(ids[:1])
    assert d.flush() == tok.decode(ids[:1]) == "\ufffd"


def test_invalid_ids_raise_naming_the_id(tok):
    for bad in (-1, tok.vocab_size, 2**40):
        with pytest.raises(ferrite.InvalidTokenError, match=str(bad)):
            tok.decode([1, bad])
        with pytest.raises(ferrite.InvalidTokenError, match=str(bad)):
            tok.id_to_token(bad)
        with pytest.raises(ferrite.InvalidTokenError, match=str(bad)):
            tok.decoder().push(bad)
    assert tok.token_to_id("definitely not a token ☃☃") is None
    assert tok.decode(np.array([14990, 1879], dtype=np.int64)) == tok.decode([14990, 1879])


def test_from_gguffile_and_repr(model_path, tok):
    with ferrite.GgufFile(model_path) as f:
        other = ferrite.Tokenizer.from_gguf(f)
    assert other.encode("hello world") == tok.encode("hello world")
    assert "vocab_size=151936" in repr(tok) and "qwen2" in repr(tok)
    with pytest.raises(TypeError):
        ferrite.Tokenizer.from_gguf(42)
    with pytest.raises(FileNotFoundError):
        ferrite.Tokenizer.from_gguf("/nonexistent/model.gguf")


def _write_gguf(path, model, pre):
    w = gguf.GGUFWriter(str(path), "qwen2")
    tokens = [chr(c) for c in range(0x21, 0x7F)] + ["!!", "<|im_end|>"]
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [CONTROL])
    w.add_token_merges(["! !"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(
    "model,pre,needle",
    [("gpt2", "falcon", "falcon"), ("gpt2", "default", "default"), ("llama", "qwen2", "llama")],
)
def test_unsupported_tokenizers_are_clear_errors(tmp_path, model, pre, needle):
    path = tmp_path / "tok.gguf"
    _write_gguf(path, model, pre)
    with pytest.raises(ferrite.TokenizerError, match=needle) as err:
        ferrite.Tokenizer.from_gguf(path)
    assert str(err.value).startswith(f"{path}: "), "the error names the file"


def test_byte_tokens_missing_is_an_error(tmp_path):
    # Only printable ASCII has tokens: not a byte-level vocabulary; must not build.
    path = tmp_path / "tok.gguf"
    _write_gguf(path, "gpt2", "qwen2")
    with pytest.raises(ferrite.TokenizerError, match="byte 0x00"):
        ferrite.Tokenizer.from_gguf(path)
