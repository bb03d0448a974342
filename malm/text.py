"""Recipe text: cleaning, word tokenizer, vocabulary and fixed-shape token arrays.

Stdlib + numpy only, because the on-device side (recipe encoder export, the SDK's recipe store)
needs the exact same tokens the model was trained on.

Cleaning follows H-T (Salvador et al., 2021, `preprocessing.py`): lower case, and the quantities that
Recipe1M's scraper broke ("12 cup" for "1/2 cup") are repaired in ingredient lines. On top of that we
unescape HTML entities and spell unicode vulgar fractions ("1½") as ASCII ("1 1/2") so that one quantity
is always one token.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from malm._atomic import write_text_atomic
from malm.errors import MalmError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3

VOCAB_FORMAT = 1

_UNICODE_FRACTIONS = {
    "½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅖": "2/5", "⅗": "3/5",
    "⅘": "4/5", "⅙": "1/6", "⅚": "5/6", "⅐": "1/7", "⅛": "1/8", "⅜": "3/8", "⅝": "5/8", "⅞": "7/8",
    "⅑": "1/9", "⅒": "1/10",
}  # fmt: skip
_UNICODE_FRACTION_RE = re.compile("(\\d?)([" + "".join(_UNICODE_FRACTIONS) + "])")
_FRACTION_SLASH_RE = re.compile(r"(\d)\s*[⁄∕/]\s*(\d)")  # "1 / 2", "1⁄2" → "1/2"
# Recipe1M's scraper dropped the slash of fractions at the start of a quantity ("12 cup" = "1/2 cup").
# H-T replaces these substrings anywhere; we only do it where a number starts, so "112 g" stays intact.
_BROKEN_FRACTION_RE = re.compile(r"(?<![\w./])(12|13|14|18|23|34)(?= )")
# One token: a fraction, a decimal number, a word (with inner apostrophes/hyphens), or one other symbol.
_TOKEN_RE = re.compile(r"\d+/\d+|\d+(?:[.,]\d+)?|[^\W\d_]+(?:['’-][^\W\d_]+)*|[^\w\s]", re.UNICODE)


def clean_text(text: str) -> str:
    """Lower case, HTML entities decoded, unicode fractions spelled out, whitespace collapsed."""
    # The guards skip work most lines do not need: this runs ~20 times per recipe over a million recipes.
    if "&" in text:
        text = html.unescape(html.unescape(text))  # the scrape holds some doubly escaped "&amp;amp;"
    ascii_only = text.isascii()
    if not ascii_only:
        text = _UNICODE_FRACTION_RE.sub(_spell_fraction, text)
        text = unicodedata.normalize("NFKC", text)
    if not ascii_only or "/" in text:
        text = _FRACTION_SLASH_RE.sub(r"\1/\2", text)
    return " ".join(text.split()).lower()


def _spell_fraction(m: re.Match[str]) -> str:
    return (m.group(1) + " " if m.group(1) else "") + _UNICODE_FRACTIONS[m.group(2)]


def clean_ingredient(text: str) -> str:
    """`clean_text` plus the repair of broken fractions that only ingredient quantities suffer from."""
    return _BROKEN_FRACTION_RE.sub(lambda m: m.group(1)[0] + "/" + m.group(1)[1], clean_text(text))


def tokenize(text: str) -> list[str]:
    """Word tokens of already-cleaned text (`clean_text`): words, numbers, fractions, punctuation."""
    return _TOKEN_RE.findall(text)


class Vocabulary:
    """Word ↔ id map with `<pad>`=0 `<start>`=1 `<end>`=2 `<unk>`=3; words follow by frequency."""

    def __init__(self, words: Sequence[str], min_freq: int = 1, counts: Sequence[int] | None = None) -> None:
        words = list(words)
        if words[:4] != list(SPECIALS):
            words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        if len(set(words)) != len(words):
            raise ValueError("vocabulary: duplicate words")
        self.words: list[str] = words
        self.index: dict[str, int] = {w: i for i, w in enumerate(words)}
        self.min_freq = int(min_freq)
        self.counts = list(counts) if counts is not None else None

    @classmethod
    def build(cls, counter: Counter[str] | dict[str, int], min_freq: int = 1) -> Vocabulary:
        """Keep words seen at least `min_freq` times; most frequent first, ties alphabetical (deterministic)."""
        if min_freq < 1:
            raise ValueError(f"vocabulary: min_freq must be >= 1, got {min_freq}")
        kept = sorted(((w, c) for w, c in counter.items() if c >= min_freq and w not in SPECIALS),
                      key=lambda wc: (-wc[1], wc[0]))
        return cls([w for w, _ in kept], min_freq=min_freq, counts=[0] * 4 + [c for _, c in kept])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def __hash__(self) -> int:
        return hash(tuple(self.words))

    def id(self, word: str) -> int:
        return self.index.get(word, UNK_ID)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.index.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if skip_special and i < len(SPECIALS):
                if i == END_ID:
                    break
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": VOCAB_FORMAT, "min_freq": self.min_freq, "words": self.words}
        if self.counts is not None:
            d["counts"] = self.counts
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "vocabulary") -> Vocabulary:
        if not isinstance(d, dict) or not isinstance(d.get("words"), list):
            raise MalmError(f"{source}: not a malm vocabulary (expected a JSON object with a 'words' list)")
        if d.get("format", VOCAB_FORMAT) != VOCAB_FORMAT:
            raise MalmError(f"{source}: vocabulary format {d.get('format')!r}, this malm reads {VOCAB_FORMAT}")
        words = d["words"]
        if words[:4] != list(SPECIALS) or not all(isinstance(w, str) for w in words):
            raise MalmError(f"{source}: vocabulary must start with {list(SPECIALS)} and hold only strings")
        try:
            return cls(words, min_freq=int(d.get("min_freq", 1)), counts=d.get("counts"))
        except ValueError as e:
            raise MalmError(f"{source}: {e}") from e

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MalmError(f"{path}: vocabulary file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MalmError(f"{path}: cannot read vocabulary JSON ({e})") from None
        return cls.from_dict(d, source=str(path))


@dataclass(frozen=True)
class TextLimits:
    """Truncation of a recipe into fixed-shape token arrays (H-T defaults)."""

    max_title_tokens: int = 20  # T: title length including <start> and <end>
    max_ingredients: int = 20  # Ni: ingredient lines kept (the first ones)
    max_instructions: int = 20  # Ns: instruction sentences kept (the first ones)
    max_tokens: int = 15  # L: tokens per ingredient / instruction including <start> and <end>

    def __post_init__(self) -> None:
        for name in ("max_title_tokens", "max_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 3:
                raise ValueError(f"TextLimits.{name} must be an int >= 3 (room for <start> w <end>)")
        for name in ("max_ingredients", "max_instructions"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TextLimits.{name} must be an int >= 1")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextLimits:
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__ if k in d})


def encode_sequence(tokens: Sequence[str], vocab: Vocabulary, length: int, out: np.ndarray | None = None) -> np.ndarray:
    """`<start> w… <end>` then `<pad>` to `length` (words truncated to fit); empty tokens → all `<pad>`."""
    row = np.zeros(length, dtype=np.int32) if out is None else out
    if tokens:
        ids = vocab.encode(tokens[: length - 2])
        row[0] = START_ID
        row[1 : 1 + len(ids)] = ids
        row[1 + len(ids)] = END_ID
    return row


def encode_recipe(
    title: str,
    ingredients: Sequence[str],
    instructions: Sequence[str],
    vocab: Vocabulary,
    limits: TextLimits | None = None,
) -> dict[str, np.ndarray]:
    """Fixed-shape int32 token arrays of one recipe: `title [T]`, `ingredients [Ni, L]`, `instructions [Ns, L]`.

    Text is cleaned here (`clean_text`, `clean_ingredient` for ingredient lines), so raw Recipe1M text can
    be passed. Lines that clean to nothing are dropped before truncation, so rows stay contiguous.
    """
    limits = limits or TextLimits()
    ingr_tokens = [t for t in (tokenize(clean_ingredient(s)) for s in ingredients) if t][: limits.max_ingredients]
    instr_tokens = [t for t in (tokenize(clean_text(s)) for s in instructions) if t][: limits.max_instructions]
    out = {
        "title": encode_sequence(tokenize(clean_text(title)), vocab, limits.max_title_tokens),
        "ingredients": np.zeros((limits.max_ingredients, limits.max_tokens), dtype=np.int32),
        "instructions": np.zeros((limits.max_instructions, limits.max_tokens), dtype=np.int32),
    }
    for i, toks in enumerate(ingr_tokens):
        encode_sequence(toks, vocab, limits.max_tokens, out["ingredients"][i])
    for i, toks in enumerate(instr_tokens):
        encode_sequence(toks, vocab, limits.max_tokens, out["instructions"][i])
    return out


def recipe_tokens(title: str, ingredients: Sequence[str], instructions: Sequence[str]) -> list[str]:
    """Every token of a recipe (what the vocabulary counts), cleaned the same way `encode_recipe` does."""
    toks = tokenize(clean_text(title))
    for s in ingredients:
        toks.extend(tokenize(clean_ingredient(s)))
    for s in instructions:
        toks.extend(tokenize(clean_text(s)))
    return toks
