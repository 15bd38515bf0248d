"""Built-in sentiment corpus: templated reviews with a positive or negative label, from a seed.

The smoke pipeline's classification task: a tiny encoder must beat chance by a wide margin in a
minute of CPU training, so the label is a deterministic function of the review's words.

A review is one to three sentences in random order:

    1-2 opinion sentences   "The acting was really wonderful."      (cue word: the label)
                            "The soundtrack was not dull."          (negation flips the cue)
    0-1 recommendation      "I would recommend it to my brother."   /  "... would not ..."
    0-2 neutral sentences   "We watched it on a Sunday."            (no cue: noise)

Every opinion and recommendation in a review agrees with the label (1 positive, 0 negative), so
there is no ambiguity; about one opinion in five is negated, which a bag of words cannot resolve
and a model with attention can. Labels are balanced (drawn first, with probability 1/2).
"""

from __future__ import annotations

import random

SUBJECTS = (
    "the movie", "the film", "the acting", "the story", "the ending", "the music", "the plot",
    "the cast", "the dialogue", "the soundtrack", "the camera work", "the script",
    "the first half", "the villain", "the humour", "the pacing",
)
POSITIVE = (
    "great", "wonderful", "excellent", "superb", "delightful", "brilliant", "charming",
    "moving", "fantastic", "enjoyable", "beautiful", "clever",
)
NEGATIVE = (
    "terrible", "awful", "boring", "dreadful", "dull", "painful", "disappointing", "mediocre",
    "clumsy", "tedious", "silly", "forgettable",
)
INTENSIFIERS = ("", "really ", "truly ", "quite ", "very ", "rather ")
PEOPLE = ("my brother", "my sister", "my friends", "my parents", "my colleagues")
NEUTRAL = (
    "We watched it on a {day}.", "I saw it with {people}.", "It runs for about {n} minutes.",
    "The tickets were bought online.", "It came out last {season}.",
    "I had heard about it from {people}.", "We went to the late show on {day}.",
)
DAYS = ("Monday", "Tuesday", "Friday", "Saturday", "Sunday")
SEASONS = ("spring", "summer", "autumn", "winter")


def _opinion(rng: random.Random, positive: bool) -> str:
    negated = rng.random() < 0.2
    cue = rng.choice(NEGATIVE if positive == negated else POSITIVE)
    verb = rng.choice(("was", "felt", "seemed"))
    middle = "not " if negated else rng.choice(INTENSIFIERS)
    return f"{rng.choice(SUBJECTS)} {verb} {middle}{cue}."


def _recommendation(rng: random.Random, positive: bool) -> str:
    whom = rng.choice((*PEOPLE, "anyone"))
    return f"I would {'' if positive else 'not '}recommend it to {whom}."


def _neutral(rng: random.Random) -> str:
    return rng.choice(NEUTRAL).format(
        day=rng.choice(DAYS), people=rng.choice(PEOPLE), n=rng.randrange(80, 181, 5),
        season=rng.choice(SEASONS),
    )


def review(rng: random.Random) -> tuple[str, int]:
    """One review and its label (1 positive, 0 negative)."""
    positive = rng.random() < 0.5
    sentences = [_opinion(rng, positive) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.4:
        sentences.append(_recommendation(rng, positive))
    sentences += [_neutral(rng) for _ in range(rng.randint(0, 2))]
    rng.shuffle(sentences)
    return " ".join(s[0].upper() + s[1:] for s in sentences), int(positive)


def generate(size: int, seed: int) -> list[dict[str, object]]:
    """`size` distinct reviews as rows {"text", "text_pair": None, "label"}; the same for the same
    seed."""
    rng = random.Random(seed)
    rows: dict[str, int] = {}
    while len(rows) < size:
        text, label = review(rng)
        rows.setdefault(text, label)
    return [{"text": text, "text_pair": None, "label": label} for text, label in rows.items()]
