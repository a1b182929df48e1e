"""String scorers for short-form VQA answers.

Every scorer has the same shape, ``f(prediction, references) -> float`` in [0, 1]: ``references`` is one string or a
list of acceptable answers, and the score is the maximum over them (an answer is as good as the reference it matches
best). The registry :data:`SCORERS` maps names to these functions so an evaluation config can name its metric.

All scorers are deterministic, dependency-free and cheap; the LLM judge for free-form answers lives in
:mod:`glimpseprune.eval.judge`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

Scorer = Callable[[str, str | list[str]], float]

# Contractions are expanded (rather than the VQA convention of restoring apostrophes) so that "isn't", "isnt" and
# "is not" all normalise to the same tokens. Only unambiguous forms are listed: "'d" (would/had) and "'s" on nouns
# (possessive) are left alone, and the apostrophe-free "wont" is skipped because it is an English word.
_NEGATIONS = {
    "aren't": "are not",
    "can't": "cannot",
    "couldn't": "could not",
    "didn't": "did not",
    "doesn't": "does not",
    "don't": "do not",
    "hadn't": "had not",
    "hasn't": "has not",
    "haven't": "have not",
    "isn't": "is not",
    "mustn't": "must not",
    "shouldn't": "should not",
    "wasn't": "was not",
    "weren't": "were not",
    "won't": "will not",
    "wouldn't": "would not",
}
_CONTRACTIONS = {
    **_NEGATIONS,
    **{k.replace("'", ""): v for k, v in _NEGATIONS.items() if k != "won't"},
    "i'm": "i am",
    "it's": "it is",
    "that's": "that is",
    "there's": "there is",
    "what's": "what is",
    "let's": "let us",
    "you're": "you are",
    "we're": "we are",
    "they're": "they are",
    "i've": "i have",
    "you've": "you have",
    "we've": "we have",
    "they've": "they have",
    "i'll": "i will",
    "you'll": "you will",
    "it'll": "it will",
    "we'll": "we will",
    "they'll": "they will",
}
_CONTRACTION_RE = re.compile(r"(?<![\w'])(" + "|".join(re.escape(k) for k in _CONTRACTIONS) + r")(?![\w'])")

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_ARTICLES = {"a", "an", "the"}

# Punctuation that carries meaning inside numbers survives: a thousands separator is dropped ("1,000" -> "1000",
# so it equals "1000"), a decimal point between digits is kept ("3.5"), and a leading minus sign is kept ("-2").
# Other periods are deleted rather than split on, so abbreviations stay one word ("U.S.A." -> "usa"); all remaining
# punctuation becomes a space ("t-shirt" -> "t shirt").
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PUNCT_RE = re.compile(r"(?<=\d)\.(?=\d)|(?:(?<=\s)|^)-(?=\d)|(\.)|([^\w\s]|_)")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _strip_punctuation(s: str) -> str:
    def replace(m: re.Match) -> str:
        if m.group(1):
            return ""
        if m.group(2):
            return " "
        return m.group(0)  # the number punctuation of the first two alternatives

    return _PUNCT_RE.sub(replace, s)


def _numbers_to_digits(tokens: list[str]) -> list[str]:
    """Map number words up to 99 to digits; "twenty five" (or "twenty-five") becomes one token "25"."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _TENS:
            value = _TENS[tok]
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is not None and nxt in _UNITS and 1 <= _UNITS[nxt] <= 9:
                value += _UNITS[nxt]
                i += 1
            out.append(str(value))
        elif tok in _UNITS:
            out.append(str(_UNITS[tok]))
        else:
            out.append(tok)
        i += 1
    return out


def normalize_answer(s: str) -> str:
    """VQA-style answer normalisation.

    Lower-cases, expands common contractions, removes punctuation (except the decimal point and sign of numbers;
    thousands separators are dropped so "1,000" equals "1000"), maps number words below 100 to digits, removes the
    articles a/an/the and collapses whitespace. Apostrophes are deleted rather than split on, so a possessive
    "dog's" becomes "dogs".
    """
    s = s.lower().replace("\u2019", "'").replace("\u2018", "'")
    s = _CONTRACTION_RE.sub(lambda m: _CONTRACTIONS[m.group(1)], s)
    s = s.replace("'", "")
    s = _THOUSANDS_RE.sub("", s)
    s = _strip_punctuation(s)
    tokens = [t for t in _numbers_to_digits(s.split()) if t not in _ARTICLES]
    return " ".join(tokens)


def _as_list(references: str | list[str]) -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("at least one reference answer is required")
    return refs


def exact_match(prediction: str, references: str | list[str]) -> float:
    """1 if the normalised prediction equals a normalised reference, else 0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in _as_list(references)))


def _as_number(s: str) -> float | None:
    return float(s) if _NUMBER_RE.fullmatch(s) else None


def relaxed_match(prediction: str, references: str | list[str], tolerance: float = 0.05) -> float:
    """Lenient match: the reference appears as a whole word or phrase inside the prediction.

    After normalisation, "The triangle is red." scores 1 against "red". This is deliberately lenient: a verbose
    answer that mentions the right word among wrong ones ("red or blue") also scores 1, so report it next to
    :func:`exact_match`, never instead of it.

    When both the normalised prediction and reference are plain numbers, they match if they differ by at most
    ``tolerance`` (relative to the reference; 5% as in ChartQA's relaxed accuracy). A zero reference needs an exact 0.
    """
    pred = normalize_answer(prediction)
    pred_num = _as_number(pred)
    for ref in _as_list(references):
        ref = normalize_answer(ref)
        ref_num = _as_number(ref)
        if pred_num is not None and ref_num is not None:
            if abs(pred_num - ref_num) <= tolerance * abs(ref_num):
                return 1.0
        elif ref == "":
            if pred == "":
                return 1.0
        elif f" {ref} " in f" {pred} ":
            return 1.0
    return 0.0


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, references: str | list[str], threshold: float = 0.5) -> float:
    """Normalized Levenshtein similarity as in DocVQA, for one question (averaging over questions gives ANLS).

    Strings are lower-cased and whitespace-normalised (no other normalisation: OCR answers are compared character
    by character). Per reference, the similarity is 1 - d / max(len) where d is the edit distance, and it is set to
    0 when the normalised distance d / max(len) reaches ``threshold`` (0.5), so a wrong answer gets no partial credit
    for sharing a few letters. Two empty strings are identical (1.0).
    """

    def clean(s: str) -> str:
        return " ".join(s.lower().split())

    pred = clean(prediction)
    best = 0.0
    for ref in _as_list(references):
        ref = clean(ref)
        longest = max(len(pred), len(ref))
        if longest == 0:
            return 1.0
        # The distance is at least the length difference: skip the quadratic DP when that alone fails the threshold.
        if abs(len(pred) - len(ref)) / longest >= threshold:
            continue
        distance = levenshtein(pred, ref) / longest
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


def token_f1(prediction: str, references: str | list[str]) -> float:
    """SQuAD-style F1 between the bags of normalised tokens; two empty answers score 1, one empty scores 0."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for ref in _as_list(references):
        ref_tokens = normalize_answer(ref).split()
        if not pred or not ref_tokens:
            best = max(best, float(pred == ref_tokens))
            continue
        common = sum((Counter(pred) & Counter(ref_tokens)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


SCORERS: dict[str, Scorer] = {
    "exact_match": exact_match,
    "relaxed_match": relaxed_match,
    "anls": anls,
    "token_f1": token_f1,
}


def get_scorer(name: str) -> Scorer:
    """Look up a scorer by name; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; valid names: {', '.join(sorted(SCORERS))}") from None
