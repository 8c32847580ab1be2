"""Builds cases.json and long_document.txt, the tokenizer agreement corpus.

Deterministic: re-running rewrites the same files. Run from the repository root:
    python tests/data/tokenizer_corpus/make_corpus.py
Each case targets a pre-tokenizer or BPE edge; tests/test_tokenizer.py adds seeded random strings.
"""

import itertools
import json
import pathlib
import random

HERE = pathlib.Path(__file__).parent

CODE = [
    "def f(x):\n\treturn x  +  1\n",
    "if (a&&b) {\n    return;\n}\n",
    "for i in range(10):\n        print(i, end='')\n",
    "\t\tindented\twith\ttabs\t\n",
    "int main(void){printf(\"%d\\n\",42);return 0;}",
    "    \n    \n\n",
    "x = [1,2,3]    # comment   \r\n",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "SELECT * FROM users WHERE id = 1234567890;",
    "<div class=\"a\">&nbsp;</div>",
    "a\u00a0b\u2003c\u3000d",  # no-break, em and ideographic spaces
    "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n",
    "    def __init__(self, *args, **kwargs) -> None:\n        super().__init__()\n",
    "/* block */ // line\n\t// tab then comment",
    "{\"key\": [1, 2.5e-10, null, true], \"k2\": \"v\"}",
    "$ ls -la | grep '^d' > out.txt 2>&1",
    "C:\\Users\\name\\file.txt",
    "https://example.com/path?q=1&r=two#frag",
    "            ",
    "\t",
    " \t \t ",
    "a   \t  b",
    "   leading and trailing   ",
]
NUMBERS = [
    "0", "7", "42", "1234", "12345678901234567890", "3.14159265358979", "-0.5e+10", "1,000,000",
    "٠١٢٣٤٥٦٧٨٩", "१२३४५", "①②③", "Ⅻ", "½ ¾", "2024-02-29T12:34:56Z", "v1.2.3-rc.4", "0x1F600", "99 bottles",
    "a1b22c333d4444", " 123 456 ",
]
CONTRACTIONS = [
    "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "THEY'RE", "WE'VE", "I'M",
    "YOU'LL", "HE'D", "It'S", "'s", "'tis", "rock 'n' roll", "o'clock", "'''", "''s", "the dog's bone's",
    "we’re", "it ' s",
]
SCRIPTS = [
    "你好，世界！这是一个测试。", "机器学习模型的分词器", "日本語のテキストです。ひらがなとカタカナ、漢字。",
    "ｶﾀｶﾅ 半角", "한국어 텍스트입니다. 안녕하세요!", "مرحبا بالعالم، هذا اختبار.", "नमस्ते दुनिया, यह एक परीक्षण है।",
    "Привет, мир! Это тест.", "Ελληνικά γράμματα", "עברית מימין לשמאל", "ภาษาไทยไม่มีช่องว่าง", "Tiếng Việt có dấu",
    "Ꭰ Cherokee", "ᚠᚢᚦ runes", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙", "ℌ𝔢𝔩𝔩𝔬", "ﬁ ligature ﬂ", "Ǆ ǅ ǆ", "ß ẞ ſ ſt", "İstanbul ı",
]
EMOJI = [
    "👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇳🇯🇵", "❤️", "🤖💬🔥", "1️⃣", "👩🏿‍💻 codes", "🧑‍🤝‍🧑", "text😀text",
]
COMBINING = [
    "cafe\u0301", "caf\u00e9", "e\u0301\u0302\u0303", "n\u0303o", "A\u030a", "\u1100\u1161\u11a8",  # Hangul jamo
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dalgo",
    "\u0301 leading combining", "ﾊﾟ", "Å Å", "\u212b angstrom sign", "\u2126 ohm sign",
]
NEWLINES = [
    "a\r\nb\r\n", "\n", "\n\n\n\n", "\r\n\r\n", "a\n\n\nb", "  \n  ", "x\r\ry", "line\u2028sep\u2029para",
    "end\n", "\nstart", "\n \n \n", "a\u0085b", "tab\t\n\t\n", ".\n\n", "!!!\n", "???\r\n",
]
SPECIAL = [
    "<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|>", "a<|endoftext|>b", "<|im_start|><|im_end|>",
    "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "<|repo_name|>ferrite\n<|file_sep|>src/lib.rs\n", "<|im_start", "<|im_start|", "im_start|>", "<<|im_end|>>",
    " <|im_end|> ", "\n<|im_end|>\n", "<|vision_start|><|image_pad|><|vision_end|>", "<tool_call><tool_call>",
    "<|IM_END|>", "<|im_end|>cafe\u0301",
]
PUNCT = [
    "Hello, world!", "...", "?!?!", "—–-", "«quotes» „more“ 「括弧」", "@user #tag $100 %50 ^_^ &amp; *bold*",
    "~~~", "((()))", "[[nested]]", "a.b.c", "e.g. i.e.", "—", "…", "¡Hola! ¿Qué tal?", "x=y+z*w/v", ":-) ;-)",
]
MIXED = [
    "The quick brown fox jumps over the lazy dog.", "UPPER lower MiXeD", "camelCaseIdentifier snake_case_name",
    "HTTPServerError", "naïve résumé coöperate", "Ünïcödé", "mañana", "façade", "Ærø", "Œuvre",
]


def build_cases():
    groups = [CODE, NUMBERS, CONTRACTIONS, SCRIPTS, EMOJI, COMBINING, NEWLINES, SPECIAL, PUNCT, MIXED]
    cases = [c for g in groups for c in g]
    rng = random.Random(20261122)
    # Joins across groups exercise boundaries between categories (space/no space/newline).
    for sep in [" ", "", "\n", "  ", "\t"]:
        for _ in range(30):
            a, b = rng.choice(groups), rng.choice(groups)
            cases.append(rng.choice(a) + sep + rng.choice(b))
    for g in groups:
        cases.append(" ".join(g))
        cases.append(" " + g[0])
        cases.append(g[-1] + " ")
    cases += ["", " ", "  ", "a", " a", "a ", "\u200b", "\ufeffBOM", "\x00\x01\x7f", "A" * 300, " " * 100,
              "ab" * 150, "1" * 80, "\n" * 40, "🤖" * 30, "中" * 100]
    for w, n in itertools.product(["x", "Ġ", "é"], [1, 2, 3, 17]):
        cases.append(w * n)
    seen, out = set(), []
    for c in cases:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def build_long_document(cases):
    """About 200 KB: this repository's own Rust sources and docs interleaved with the cases."""
    root = HERE.parents[2]
    parts = []
    for path in sorted(root.glob("src/**/*.rs")) + sorted(root.glob("*.md")):
        parts.append(path.read_text(encoding="utf-8"))
    rng = random.Random(7)
    body = []
    for p in parts:
        body.append(p)
        body.append("\n".join(rng.sample(cases, 20)))
    return "\n\n".join(body)[:200_000]


if __name__ == "__main__":
    cases = build_cases()
    (HERE / "cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    doc = build_long_document(cases)
    (HERE / "long_document.txt").write_bytes(doc.encode("utf-8"))
    print(len(cases), "cases,", sum(len(c.encode()) for c in cases), "bytes; long document", len(doc.encode()), "bytes")
