"""Token ids for test prompts, from the real model's own vocabulary (GGUF metadata) without the
tokenizer under test: text is mapped to GPT-2 byte-level symbols and split greedily into the
longest vocabulary entries. The ids are real tokens that spell the text, which is all a
forward-pass comparison needs (they need not be the canonical BPE split)."""

from __future__ import annotations

from functools import lru_cache

from gguf import GGUFReader

PROMPTS = {
    "english": "The quick brown fox jumps over the lazy dog. Meanwhile, the cat sat quietly on the warm windowsill.",
    "code": "def fibonacci(n):\n    if n <= 1:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nprint(fibonacci(10))",
    "chat": "<|im_start|>user\nWrite a haiku about Rust.<|im_end|>\n<|im_start|>assistant\n",
}


def _byte_symbols() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=4)
def vocabulary(path: str) -> dict[str, int]:
    field = GGUFReader(path).fields["tokenizer.ggml.tokens"]
    return {bytes(field.parts[i]).decode("utf-8"): n for n, i in enumerate(field.data)}


def token_ids(path: str, text: str) -> list[int]:
    vocab = vocabulary(str(path))
    sym = _byte_symbols()
    ids: list[int] = []
    # Special tokens are whole vocabulary entries; split them out first.
    parts = [text]
    for special in ("<|im_start|>", "<|im_end|>"):
        parts = [q for p in parts for q in _split_keep(p, special)]
    for part in parts:
        if part in ("<|im_start|>", "<|im_end|>"):
            ids.append(vocab[part])
            continue
        s = "".join(sym[b] for b in part.encode("utf-8"))
        i = 0
        while i < len(s):
            for j in range(min(len(s), i + 24), i, -1):
                if s[i:j] in vocab:
                    ids.append(vocab[s[i:j]])
                    i = j
                    break
            else:
                raise ValueError(f"no vocabulary entry starts {s[i:i + 8]!r}")
    return ids


def _split_keep(text: str, sep: str) -> list[str]:
    out = []
    for k, piece in enumerate(text.split(sep)):
        if k:
            out.append(sep)
        if piece:
            out.append(piece)
    return out
