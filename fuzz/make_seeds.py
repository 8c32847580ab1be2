"""Writes seed inputs for the gguf_parse fuzz target into fuzz/corpus/gguf_parse/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_gguf import every_value_kind, malformed_cases  # noqa: E402

out = Path(__file__).parent / "corpus" / "gguf_parse"
out.mkdir(parents=True, exist_ok=True)
(out / "valid").write_bytes(every_value_kind().build())
for i, (name, img, _) in enumerate(malformed_cases()):
    (out / f"malformed_{i:02d}").write_bytes(img[:4096])
print(f"wrote {len(list(out.iterdir()))} seeds to {out}")
