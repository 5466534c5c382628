"""Candidate facts from one turn: the rules, and the model's answer kept only where the user said it."""

from __future__ import annotations

import json

import pytest

from moteur.memory.extraction import Candidate, LLMExtractor, RuleExtractor


@pytest.mark.parametrize(("message", "expected"), [
    ("Hi, my name is Marion and I live in Lyon.",
     [Candidate("The user's name is Marion.", "name"), Candidate("The user lives in Lyon.", "home")]),
    ("I moved to Paris last month.", [Candidate("The user lives in Paris.", "home")]),
    ("I no longer live in Lyon.", [Candidate("The user lives in Lyon.", "home", negated=True)]),
    ("I don't like olives anymore.", [Candidate("The user likes olives.", "", negated=True)]),
    ("I work at Airbus as an engineer.", [Candidate("The user works at Airbus.", "employer")]),
    ("My sister's name is Clementine.", [Candidate("The name of the user's sister is Clementine.", "name-of:sister")]),
    ("What's the weather like?", []),
    ("J'habite à Lyon.", [Candidate("L'utilisateur habite à Lyon.", "home")]),
    ("Je m\u2019appelle Camille et j'habite en Bretagne depuis 2010.",
     [Candidate("L'utilisateur s'appelle Camille.", "name"), Candidate("L'utilisateur habite en Bretagne.", "home")]),
    ("Je n'habite plus à Lyon.", [Candidate("L'utilisateur habite à Lyon.", "home", negated=True)]),
    ("Je travaille chez Airbus depuis 2019.", [Candidate("L'utilisateur travaille chez Airbus.", "employer")]),
    ("Je suis allergique aux arachides.", [Candidate("L'utilisateur est allergique aux arachides.")]),
    ("Où est-ce que j'habite ?", []),
])
async def test_rules_read_first_person_statements_with_their_slot(message: str, expected: list[Candidate]) -> None:
    assert await RuleExtractor().extract(message, "") == expected


async def test_the_models_facts_are_kept_only_when_grounded_in_the_users_words() -> None:
    async def complete(system: str, user: str, schema: dict[str, object]) -> str:
        assert "facts" in json.dumps(schema)
        return json.dumps({"facts": ["The user plays the cello.", "The user is a famous astronaut."]})

    found = await LLMExtractor(complete).extract("I play the cello in an orchestra.", "")
    assert found == [Candidate("The user plays the cello.")]


async def test_an_unparsable_model_answer_yields_no_facts() -> None:
    async def complete(system: str, user: str, schema: dict[str, object]) -> str:
        return "Sure! Here are the facts: the user likes cats"

    assert await LLMExtractor(complete).extract("I like cats.", "") == []
