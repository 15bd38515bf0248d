"""The built-in corpora: deterministic, the sizes asked for, and unambiguous (every target is a
function of the source), which is what makes them learnable in a smoke run."""

from __future__ import annotations

import re

import pytest

from pipeline.data import toy_sentiment, toy_translation
from pipeline.data.toy_translation import (
    ADJECTIVES,
    ADVERBS,
    INTRANSITIVE_VERBS,
    LEXICON,
    NOUNS,
    PREPOSITIONS,
    TRANSITIVE_VERBS,
)

FUNCTION_WORDS = {"the", "a", "an", "some", "does", "do", "did", "not"}
LEMMA_OF = {
    **{sg: sg for sg in NOUNS}, **{pl: sg for sg, pl in NOUNS.items()},
    **{a: a for a in (*ADJECTIVES, *PREPOSITIONS, *ADVERBS)},
    **{form: forms[1] for forms in TRANSITIVE_VERBS + INTRANSITIVE_VERBS for form in forms},
}


def words(sentence: str) -> list[str]:
    assert sentence[0].isupper() and sentence.endswith(".")
    return sentence[:-1].lower().split()


@pytest.mark.parametrize("module", [toy_translation, toy_sentiment])
def test_generation_is_deterministic_distinct_and_sized(module):
    rows = module.generate(500, seed=3)
    assert rows == module.generate(500, seed=3)
    assert rows != module.generate(500, seed=4)
    assert len(rows) == 500
    text = "src" if module is toy_translation else "text"
    assert len({row[text] for row in rows}) == 500


def test_lexicon_is_injective_over_distinct_lemmas():
    assert len(set(toy_translation.LEMMAS)) == len(toy_translation.LEMMAS)
    roots = list(LEXICON.values())
    assert len(set(roots)) == len(roots)
    assert all(re.fullmatch(r"[bdfgklmnprstvz][aeiou][bdfgklmnprstvz][aeiou][bdfgklmnprstvz]", r)
               for r in roots)


def test_translation_lengths_and_vocabulary_are_small():
    rows = toy_translation.generate(2000, seed=0)
    lengths = [len(words(row["src"])) for row in rows]
    assert 3 <= min(lengths) and max(lengths) <= 12
    english = {w for row in rows for w in words(row["src"])}
    zelan = {w for row in rows for w in words(row["tgt"])}
    assert 100 <= len(english) <= 300 and 100 <= len(zelan) <= 300


def test_every_english_lemma_has_exactly_its_root_in_the_zelan_sentence():
    """Word alignment: the Zelan sentence holds one root per English content word, suffixes
    and function words aside, so translation is a function of the English words."""
    for row in toy_translation.generate(2000, seed=1):
        english = [LEMMA_OF[w] for w in words(row["src"]) if w not in FUNCTION_WORDS]
        zelan = [w[:5] for w in words(row["tgt"]) if w not in {"lo", "un", "ne"}]
        assert sorted(LEXICON[lemma] for lemma in english) == sorted(zelan), row


def test_the_same_english_sentence_always_gets_the_same_zelan():
    first = {r["src"]: r["tgt"] for r in toy_translation.generate(3000, seed=0)}
    second = {r["src"]: r["tgt"] for r in toy_translation.generate(3000, seed=1)}
    shared = first.keys() & second.keys()
    assert shared and all(first[s] == second[s] for s in shared)


def test_zelan_grammar_on_a_drawn_sentence():
    """Plural agreement, determiners, verb-final order and the past suffix, checked on the
    sentence the generator draws for a fixed seed."""
    rows = toy_translation.generate(400, seed=0)
    row = next(r for r in rows if " did not " in r["src"] and r["src"].startswith("Some "))
    english, zelan = words(row["src"]), words(row["tgt"])
    assert zelan[0] == "un" and zelan[1].endswith("i")  # "some" + plural noun
    verb = next(w for w in english[english.index("not") + 1:] if w in LEMMA_OF)
    assert zelan[zelan.index("ne") + 1] == LEXICON[LEMMA_OF[verb]] + "is"
    tail = zelan[zelan.index("ne") + 2:]
    assert len(tail) <= 1  # only an adverb may follow the verb


def opinion_polarity(sentence: str) -> int | None:
    """1 / 0 for an opinion or recommendation sentence, None for a neutral one."""
    words_ = sentence.lower().rstrip(".").split()
    if "recommend" in words_:
        return 0 if "not" in words_ else 1
    cues = [w for w in words_ if w in toy_sentiment.POSITIVE + toy_sentiment.NEGATIVE]
    if not cues:
        return None
    positive = cues[0] in toy_sentiment.POSITIVE
    return int(positive != ("not" in words_))


def test_every_opinion_in_a_review_agrees_with_its_label():
    rows = toy_sentiment.generate(2000, seed=0)
    for row in rows:
        polarities = [opinion_polarity(s) for s in re.split(r"(?<=\.) ", row["text"])]
        assert {p for p in polarities if p is not None} == {row["label"]}, row
    share = sum(row["label"] for row in rows) / len(rows)
    assert 0.45 < share < 0.55
    negated = sum(" not " in row["text"] and "recommend" not in row["text"] for row in rows)
    assert negated > 100  # negation is present, so a bag of words is not enough
