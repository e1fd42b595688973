"""The semantic cache's verification step on questions an embedding scores as close:
each hard-negative kind is vetoed, rewordings pass (examples of our own, not the
benchmark's labelled pairs)."""

from __future__ import annotations

import pytest

from policies.semantic_verify import analyse, compare, verify

SAME = [
    ("How do I reset my password?", "how can i reset my password"),
    ("What is the capital of France?", "Tell me France's capital"),
    ("Is Python or Go faster?", "Is Go or Python faster?"),
    ("Can't log in to my account", "cannot log in to my account"),
    ("convert 5km to miles", "convert 5 km to miles"),
    ("How do I enable two-factor authentication?", "how to turn on 2FA"),
    ("schedule a backup every day at 3am", "schedule a backup daily at 3:00 am"),
    ("What is the time complexity of binary search?",
     "binary search - what's its time complexity?"),
    ("What's the difference between a Kubernetes Deployment and a StatefulSet?",
     "k8s StatefulSet vs Deployment, how are they different"),
    ("What does SELECT DISTINCT do in SQL?", "explain SQL's SELECT DISTINCT"),
]  # fmt: skip

DIFFERENT = [
    ("Does the Moon orbit the Earth?", "Does the Earth orbit the Moon?", "order"),
    ("convert km to miles", "convert miles to km", "order"),
    ("Is a whale bigger than an elephant?", "Is an elephant bigger than a whale?", "order"),
    ("Is every square a rectangle?", "Is every rectangle a square?", "order"),
    (
        "How do I list all files in a folder?",
        "How do I list all hidden files in a folder?",
        "scope",
    ),
    ("turn on dark mode", "turn off dark mode", "polarity"),
    ("how to increase the font size", "how to decrease the font size", "polarity"),
    ("convert 5 miles to km", "convert 8 miles to km", "numbers"),
    ("is it safe to run two replicas", "is it safe to run three replicas", "numbers"),
    ("Is this function thread safe?", "Is this function not thread safe?", "negation"),
    ("how do I subscribe to the list", "how do I unsubscribe from the list", "negation"),
    ("Who founded Microsoft?", "Who founded Apple?", "terms"),
    ("translate this: good morning", "summarize this: good morning", "task"),
    ("write a poem about the sea", "write a story about the sea", "task"),
    ("how do I read a CSV file in Python", "how do I read a CSV file in Rust", "terms"),
    ("how do i host a static site", "how do i host a static site for free", "scope"),
]


@pytest.mark.parametrize(("a", "b"), SAME)
def test_rewordings_pass(a: str, b: str) -> None:
    assert verify(analyse(a), analyse(b)).same
    assert verify(analyse(b), analyse(a)).same  # the check is symmetric


@pytest.mark.parametrize(("a", "b", "reason"), DIFFERENT)
def test_hard_negatives_are_vetoed(a: str, b: str, reason: str) -> None:
    verdict = verify(analyse(a), analyse(b))
    assert (verdict.same, verdict.reason) == (False, reason)
    assert not verify(analyse(b), analyse(a)).same


def test_a_single_swapped_word_is_named_for_the_caller_to_score() -> None:
    a, b = analyse("How do I buy a car"), analyse("How do I purchase a car")
    assert compare(a, b).swapped == ("buy", "purchase")
    assert verify(a, b, substitution_similarity=0.87).same  # near-synonyms
    assert not verify(a, b, substitution_similarity=0.2).same  # unrelated words
    assert compare(analyse("reset my password"), analyse("reset my password")).swapped is None
