"""Built-in translation corpus: English -> Zelan, an invented language, generated from a seed.

The smoke pipeline needs a translation task that a tiny transformer (d_model 64-128, 2 layers)
learns in a minute or two on a CPU, so that BLEU separates a trained model from an untrained one
by a wide margin. Zelan is therefore a deterministic function of the English sentence: no
ambiguity, a small vocabulary, and only as much reordering and agreement as makes attention
necessary. Nothing is downloaded; the seed only picks the sentences, never the language.

English (3 to 12 words; 219 word forms over 107 lemmas; Zelan has 234):

    SENTENCE    = SUBJECT VERB [OBJECT] [PLACE] [ADVERB] "."
    SUBJECT     = DETERMINER [ADJECTIVE] NOUN      "the" (any number), "a"/"an" (singular),
    OBJECT      = DETERMINER [ADJECTIVE] NOUN      "some" (plural)
    VERB        = present, agreeing with the subject ("sees" / "see"), or past ("saw"); negated
                  as "does not" / "do not" / "did not" + the base form; OBJECT only after a
                  transitive verb
    PLACE       = PREPOSITION DETERMINER [ADJECTIVE] NOUN

Zelan:

    1. every English lemma has one Zelan root, five letters CVCVC (`LEXICON`, drawn once from a
       fixed seed and part of the language);
    2. determiners: "the" -> "lo"; "a", "an", "some" -> "un" (number is marked on the noun);
    3. nouns take -i in the plural; an adjective follows its noun and agrees with it (-i);
    4. the verb moves to the end of the clause, after the object and the place, before the
       adverb; its suffix marks tense and the subject's number: -a present singular, -en present
       plural, -is past (any number); negation is the particle "ne" before the verb;
    5. prepositions translate word for word and stay in front of their noun phrase;
    6. the first letter is capitalised and the sentence ends with ".".

    "The farmers did not like some red apples in the garden today."
 -> "Lo soripi un tusobi dikomi porap lo takot ne lepekis sopig."
        (farmer = sorip, apple = tusob, red = dikom, in = porap, garden = takot, like = lepek,
         today = sopig)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NOUNS = {  # singular -> plural
    "cat": "cats", "dog": "dogs", "bird": "birds", "horse": "horses", "cow": "cows",
    "farmer": "farmers", "teacher": "teachers", "doctor": "doctors", "student": "students",
    "child": "children", "man": "men", "woman": "women", "friend": "friends", "king": "kings",
    "queen": "queens", "baker": "bakers", "singer": "singers", "apple": "apples",
    "book": "books", "letter": "letters", "song": "songs", "house": "houses",
    "garden": "gardens", "river": "rivers", "tree": "trees", "car": "cars", "boat": "boats",
    "table": "tables", "window": "windows", "door": "doors", "city": "cities",
    "village": "villages", "forest": "forests", "road": "roads", "flower": "flowers",
    "cake": "cakes", "picture": "pictures", "ball": "balls", "box": "boxes", "chair": "chairs",
}
ADJECTIVES = (
    "big", "small", "old", "young", "red", "green", "blue", "happy", "sad", "quiet", "tall",
    "short", "new", "kind", "clever", "lazy", "brave", "strange", "bright", "dark",
)
TRANSITIVE_VERBS = (  # third person singular, base, past
    ("sees", "see", "saw"), ("likes", "like", "liked"), ("finds", "find", "found"),
    ("buys", "buy", "bought"), ("paints", "paint", "painted"), ("visits", "visit", "visited"),
    ("carries", "carry", "carried"), ("watches", "watch", "watched"), ("opens", "open", "opened"),
    ("closes", "close", "closed"), ("builds", "build", "built"), ("loves", "love", "loved"),
    ("helps", "help", "helped"), ("follows", "follow", "followed"), ("cleans", "clean", "cleaned"),
    ("draws", "draw", "drew"), ("writes", "write", "wrote"), ("sells", "sell", "sold"),
    ("wants", "want", "wanted"), ("brings", "bring", "brought"), ("holds", "hold", "held"),
    ("pushes", "push", "pushed"),
)
INTRANSITIVE_VERBS = (
    ("sleeps", "sleep", "slept"), ("runs", "run", "ran"), ("sings", "sing", "sang"),
    ("laughs", "laugh", "laughed"), ("waits", "wait", "waited"), ("swims", "swim", "swam"),
    ("dances", "dance", "danced"), ("works", "work", "worked"), ("cries", "cry", "cried"),
    ("smiles", "smile", "smiled"),
)
PREPOSITIONS = ("in", "near", "behind", "under", "with", "across", "beside")
ADVERBS = ("today", "again", "often", "quickly", "slowly", "quietly", "together", "happily")

LEMMAS = (
    *NOUNS, *ADJECTIVES, *(v[1] for v in TRANSITIVE_VERBS + INTRANSITIVE_VERBS),
    *PREPOSITIONS, *ADVERBS,
)
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"
_LEXICON_SEED = 1729  # part of the language's definition: changing it makes another language


def _draw_lexicon() -> dict[str, str]:
    rng = random.Random(_LEXICON_SEED)
    roots: dict[str, str] = {}
    used: set[str] = set()
    for lemma in LEMMAS:
        while True:
            root = "".join(rng.choice(_CONSONANTS if i % 2 == 0 else _VOWELS) for i in range(5))
            if root not in used:
                break
        used.add(root)
        roots[lemma] = root
    return roots


LEXICON = _draw_lexicon()
"""English lemma -> Zelan root."""

MAX_WORDS = 12


@dataclass(frozen=True)
class _Phrase:
    english: list[str]
    zelan: list[str]


def _noun_phrase(rng: random.Random, plural: bool) -> _Phrase:
    noun = rng.choice(tuple(NOUNS))
    adjective = rng.choice(ADJECTIVES) if rng.random() < 0.4 else None
    definite = rng.random() < 0.5
    english_noun = NOUNS[noun] if plural else noun
    following = adjective or english_noun
    if definite:
        determiner = "the"
    elif plural:
        determiner = "some"
    else:
        determiner = "an" if following[0] in "aeiou" else "a"
    suffix = "i" if plural else ""
    english = [determiner, *([adjective] if adjective else []), english_noun]
    zelan = ["lo" if definite else "un", LEXICON[noun] + suffix]
    if adjective:
        zelan.append(LEXICON[adjective] + suffix)
    return _Phrase(english, zelan)


def _verb(rng: random.Random, forms: tuple[str, str, str], plural_subject: bool) -> _Phrase:
    third_singular, base, past_form = forms
    past = rng.random() < 0.4
    negated = rng.random() < 0.25
    if negated:
        auxiliary = "did" if past else ("do" if plural_subject else "does")
        english = [auxiliary, "not", base]
    else:
        english = [past_form if past else (base if plural_subject else third_singular)]
    suffix = "is" if past else ("en" if plural_subject else "a")
    zelan = [*(["ne"] if negated else []), LEXICON[base] + suffix]
    return _Phrase(english, zelan)


def _sentence(words: list[str]) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def sentence_pair(rng: random.Random) -> tuple[str, str]:
    """One (English, Zelan) pair of at most `MAX_WORDS` English words."""
    while True:
        plural_subject = rng.random() < 0.4
        subject = _noun_phrase(rng, plural_subject)
        transitive = rng.random() < 0.75
        forms = rng.choice(TRANSITIVE_VERBS if transitive else INTRANSITIVE_VERBS)
        verb = _verb(rng, forms, plural_subject)
        obj = _noun_phrase(rng, rng.random() < 0.4) if transitive else _Phrase([], [])
        place = _Phrase([], [])
        if rng.random() < 0.35:
            preposition, phrase = rng.choice(PREPOSITIONS), _noun_phrase(rng, rng.random() < 0.4)
            place = _Phrase([preposition, *phrase.english], [LEXICON[preposition], *phrase.zelan])
        adverb = [rng.choice(ADVERBS)] if rng.random() < 0.3 else []
        english = subject.english + verb.english + obj.english + place.english + adverb
        if len(english) <= MAX_WORDS:
            zelan = (subject.zelan + obj.zelan + place.zelan + verb.zelan
                     + [LEXICON[a] for a in adverb])
            return _sentence(english), _sentence(zelan)


def generate(size: int, seed: int) -> list[dict[str, str]]:
    """`size` distinct pairs as rows {"src": English, "tgt": Zelan}; the same for the same seed."""
    rng = random.Random(seed)
    rows: dict[str, str] = {}
    while len(rows) < size:
        english, zelan = sentence_pair(rng)
        rows.setdefault(english, zelan)
    return [{"src": src, "tgt": tgt} for src, tgt in rows.items()]
