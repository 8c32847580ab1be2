"""The haiku acceptance check, shared by tests/test_haiku.py and scripts/haiku_pass_rate.py.

Minute words: what a person says for the minutes of a clock time. 1..59 are cardinal numbers,
compounds hyphenated ("fifty-two", "twenty-one"); minute 0 is "o'clock" ("three o'clock"), since
nobody says "three zero". The check is fixed; only the prompt is shaped (PROMPT_VERSION).
"""

from __future__ import annotations

import re
import secrets
import string

ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty"]


def minute_word(minute: int) -> str:
    if not 0 <= minute <= 59:
        raise ValueError(f"minute {minute} is not in 0..59")
    if minute == 0:
        return "o'clock"
    if minute < 10:
        return ONES[minute]
    if minute < 20:
        return TEENS[minute - 10]
    tens, ones = divmod(minute, 10)
    return TENS[tens] + ("-" + ONES[ones] if ones else "")


def nonce(n: int = 8) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


def user_prompt(word: str, nonce_text: str) -> str:
    """The acceptance prompt, word for word."""
    return f'Write a haiku about GPU computing that includes the word "{word}" (nonce: {nonce_text})'


# Shaping of the prompt (never of the check): the user message is always the acceptance prompt
# above; a variant may add a system message. scripts/haiku_pass_rate.py measures each variant;
# PROMPT_VERSION is the one the acceptance test uses.
SYSTEM_PROMPTS = {
    1: None,
    2: (
        "You are a poet. Reply with only the haiku: three short lines, no title, no explanation. "
        'Use the word "{word}" exactly once, spelled exactly like that.'
    ),
    3: (
        "You write haiku. Answer with exactly three lines and nothing else. "
        'The word "{word}" must appear exactly once, written exactly as "{word}" '
        "(same spelling and hyphens), and no other number words."
    ),
    4: (
        "You are a haiku poet. Reply with only the haiku: three short lines about the user's topic, "
        'no title, no notes. One of the lines must contain the word "{word}", written exactly as '
        '"{word}", and it must appear only once. Never repeat the nonce.'
    ),
    5: (
        "You are a haiku poet. Reply with only the haiku: three short lines, no title, no notes. "
        "Use the requested word exactly once, spelled exactly as given. Never repeat the nonce."
    ),
    6: (
        "You are a haiku poet. Reply with only the haiku: three short lines, all different, no "
        "title, no notes. The first line begins with the requested word, spelled exactly as given; "
        "the other two lines never use that word or any other number. Never repeat the nonce."
    ),
    7: (
        "You are a haiku poet. Reply with only the haiku: three short lines, no title, no notes. "
        "Use the requested word exactly once, spelled exactly as given. Never repeat the nonce."
    ),
    8: (
        "You are a haiku poet. Reply with only the haiku: three short lines, no title, no notes. "
        "Use the requested word exactly once, spelled exactly as given, in the first line only. "
        "The second and third lines start with other words and contain no number at all. "
        "Never repeat the nonce."
    ),
}
# Worked examples placed before the user's message (a variant may have none).
_EXAMPLES = [
    ('Write a haiku about the sea that includes the word "thirty-one" (nonce: q8Lm2Zt0)',
     "Thirty-one gulls wheel\nover the slate-grey water\nthe tide keeps its time"),
    ('Write a haiku about a library that includes the word "six" (nonce: Rb7Kx1Pe)',
     "Six quiet readers\nturn pages under lamplight\ndust drifts through the beams"),
]
# More of them for variant 7: a teen number (the model tends to shorten "seventeen" to "seven")
# and "one" (which it tends to repeat).
_MORE_EXAMPLES = _EXAMPLES + [
    ('Write a haiku about a train station that includes the word "seventeen" (nonce: Hw3Jc9Ua)',
     "Seventeen minutes\nuntil the last train departs\ncold rails hum softly"),
    ('Write a haiku about a garden that includes the word "one" (nonce: Zp5Tq2Lm)',
     "One red tulip opens\nbees drift across the flowerbed\nrain waits in the clouds"),
]
FEW_SHOT = {
    5: _EXAMPLES,
    6: _EXAMPLES,
    7: _MORE_EXAMPLES,
    8: _MORE_EXAMPLES,
}
PROMPT_VERSION = 5


def messages(word: str, nonce_text: str, version: int | None = None) -> list[dict]:
    system = SYSTEM_PROMPTS[PROMPT_VERSION if version is None else version]
    version = PROMPT_VERSION if version is None else version
    out = []
    if system:
        out.append({"role": "system", "content": system.format(word=word)})
    for user, assistant in FEW_SHOT.get(version, []):
        out.append({"role": "user", "content": user})
        out.append({"role": "assistant", "content": assistant})
    out.append({"role": "user", "content": user_prompt(word, nonce_text)})
    return out


def word_count(text: str, word: str) -> int:
    """Occurrences of `word` as a whole word, case-insensitive. Letters, digits and hyphens next
    to it make it part of another word ("one" is not in "twenty-one" nor "someone"); a typographic
    apostrophe counts as "'" (o’clock)."""
    text = text.replace("\u2019", "'")
    return len(re.findall(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, flags=re.IGNORECASE))


def _self_check() -> None:
    words = [minute_word(m) for m in range(60)]
    assert len(set(words)) == 60
    assert words[0] == "o'clock" and words[21] == "twenty-one" and words[52] == "fifty-two" and words[40] == "forty"
    assert word_count("Twenty-one cores", "one") == 0
    assert word_count("one core, One more", "one") == 2
    assert word_count("at Fifty-Two", "fifty-two") == 1
    assert word_count("five o’clock", "o'clock") == 1
    assert word_count("someone", "one") == 0


_self_check()
