import pytest

from glimpseprune.eval.scorers import (
    SCORERS,
    anls,
    exact_match,
    get_scorer,
    levenshtein,
    normalize_answer,
    relaxed_match,
    token_f1,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The triangle is red.", "triangle is red"),
        ("  A   Dog  ", "dog"),
        ("an apple", "apple"),
        ("Two", "2"),
        ("twenty-five dogs", "25 dogs"),
        ("twenty five", "25"),
        ("thirteen", "13"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("It costs $3.50.", "it costs 3.50"),
        ("-2 degrees", "-2 degrees"),
        ("pages 3-4", "pages 3 4"),
        ("U.S.A.", "usa"),
        ("t-shirt", "t shirt"),
        ("Yes!", "yes"),
        ("I don't know", "i do not know"),
        ("isnt", "is not"),
        ("No, it isn\u2019t.", "no it is not"),
        ("Can't", "cannot"),
        ("the dog's toy", "dogs toy"),
        ("its tail", "its tail"),  # possessive "its" is not "it is"
        ("1, 2", "1 2"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match():
    assert exact_match("Two.", "2") == 1.0
    assert exact_match("The Red one", ["blue", "red one"]) == 1.0
    assert exact_match("red car", "red") == 0.0
    assert exact_match("1,000", "1000") == 1.0
    assert exact_match("don't", "do not") == 1.0


def test_relaxed_match_containment_is_whole_word():
    assert relaxed_match("The triangle is red.", "red") == 1.0
    assert relaxed_match("It is a red car", "red car") == 1.0
    assert relaxed_match("The answer is reddish", "red") == 0.0  # not a whole word
    assert relaxed_match("blue", ["green", "Blue"]) == 1.0
    assert relaxed_match("blue", "red") == 0.0


def test_relaxed_match_numeric_tolerance():
    assert relaxed_match("52", "50") == 1.0  # 4 % off
    assert relaxed_match("52.5", "50") == 1.0  # exactly 5 %
    assert relaxed_match("53", "50") == 0.0
    assert relaxed_match("0", "0") == 1.0
    assert relaxed_match("0.01", "0") == 0.0
    assert relaxed_match("-10.4", "-10") == 1.0
    assert relaxed_match("There are 50 people.", "50") == 1.0  # containment still applies
    assert relaxed_match("1,020", "1000") == 1.0


def test_relaxed_match_empty_reference():
    assert relaxed_match("", "the") == 1.0  # both normalise to ""
    assert relaxed_match("something", "the") == 0.0


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("same", "same") == 0


def test_anls():
    assert anls("Invoice 42", "invoice 42") == 1.0
    assert anls("  Invoice   42 ", "invoice 42") == 1.0  # case and whitespace
    # one substitution in 10 characters: similarity 0.9
    assert anls("invoice 43", "invoice 42") == pytest.approx(0.9)
    # distance 3 over 6 characters = 0.5 reaches the threshold -> 0
    assert anls("abcxyz", "abcdef") == 0.0
    # distance 2 over 6 = 0.333 < 0.5 -> 1 - 1/3
    assert anls("abcdxy", "abcdef") == pytest.approx(2 / 3)
    assert anls("completely different", "no") == 0.0
    assert anls("", "") == 1.0
    assert anls("", "abc") == 0.0
    assert anls("abc", "") == 0.0
    assert anls("invoice 43", ["nothing", "invoice 42"]) == pytest.approx(0.9)
    assert anls("abcxyz", "abcdef", threshold=0.6) == pytest.approx(0.5)


def test_token_f1():
    # pred {red, car}, ref {red, bus}: precision 1/2, recall 1/2
    assert token_f1("the red car", "red bus") == pytest.approx(0.5)
    # pred {red}, ref {red, bus}: precision 1, recall 1/2 -> 2/3
    assert token_f1("Red.", "red bus") == pytest.approx(2 / 3)
    assert token_f1("two dogs", "2 dogs") == 1.0
    assert token_f1("", "the") == 1.0  # both empty after normalisation
    assert token_f1("", "red") == 0.0
    assert token_f1("blue", "red") == 0.0
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # bag counts: common = min counts = 2
    assert token_f1("red", ["blue", "red"]) == 1.0


def test_scores_are_in_unit_interval():
    cases = [("", ""), ("x", "y"), ("The answer is 12", ["12", "twelve"]), ("aaaa", "a")]
    for scorer in SCORERS.values():
        for prediction, references in cases:
            assert 0.0 <= scorer(prediction, references) <= 1.0


def test_registry():
    assert set(SCORERS) == {"exact_match", "relaxed_match", "anls", "token_f1"}
    assert get_scorer("anls") is anls
    with pytest.raises(ValueError, match="anls, exact_match, relaxed_match, token_f1"):
        get_scorer("bleu")


def test_empty_reference_list_is_an_error():
    for scorer in SCORERS.values():
        with pytest.raises(ValueError, match="at least one reference"):
            scorer("x", [])
