"""The route classifier with the shipped registry (config/models.yaml) and the real embedding model
(multilingual-e5-small 4-bit, in-process, embedding the way the memory service does for the router): requests
written in French and English, none of them a route example nor in evals/routes.yaml, reach their route, and
requests no route is about fall to the catch-all. `python -m bench router` measures the whole set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from moteur.memory.embeddings import E5Embeddings
from moteur.router.registry import load_models
from moteur.router.routes import EMBED_AS_QUERY, RouteQuery, RouteTable
from moteur.router.windowing import estimate_tokens

MODELS_FILE = Path(__file__).parents[1] / "config" / "models.yaml"

HELD_OUT = [
    ("summarize", "Tu peux me résumer ce document : la réunion a porté sur le déménagement des bureaux."),
    ("summarize", "Résume-moi cet article en deux phrases : Le gouvernement a annoncé hier un plan pour le rail."),
    ("summarize", "Please write a brief summary of the text below\nThe council voted to extend the tram line."),
    ("summarize", "Sum up the key points of this podcast transcript"),
    ("summarize", "résumé stp"),  # short requests score lower: a floor set too high loses them
    ("summarize", "Quick summary?"),
    ("code", "Écris une fonction Python qui calcule la factorielle d'un nombre"),
    ("code", "Comment corriger cette erreur de segmentation en C ?"),
    ("code", "How can I fix this TypeError in my JavaScript: undefined is not a function"),
    ("code", "Write a Go program that reads a JSON file"),
    ("code", "ça compile pas, pourquoi ?"),
    ("code", "Debug this please"),
    ("chat", "Bonsoir, comment se passe ta journée ?"),
    ("chat", "Qui a écrit Les Misérables ?"),
    ("chat", "Hey, good evening! How are things?"),
    ("chat", "Who wrote Pride and Prejudice?"),
]
UNRELATED = [
    "Lorem ipsum dolor sit amet",
    "Write a limerick about a cat",
    "Donne-moi une idée de cadeau pour l'anniversaire de ma mère",
]


@pytest.fixture(scope="module")
def table() -> RouteTable:
    config, _ = load_models(MODELS_FILE)
    model = E5Embeddings()

    async def embed(texts: Sequence[str]) -> list[list[float]]:
        return model.embed_array(list(texts), EMBED_AS_QUERY).tolist()

    return RouteTable(config, embed)


def _query(text: str) -> RouteQuery:
    return RouteQuery("", "standard", estimate_tokens(text), False, False, text)


async def test_held_out_french_and_english_requests_reach_their_route(table: RouteTable) -> None:
    wrong = {}
    for route, text in HELD_OUT:
        decision = await table.decide(_query(text))
        # The catch-all is right either way; a specialised route only when the classifier chose it.
        chosen = (decision.route.name, decision.how if route != "chat" else "classifier")
        if chosen != (route, "classifier"):
            wrong[text] = (decision.route.name, decision.how, round(decision.score, 3))
    assert not wrong, f"misrouted at classifier_min_score {table.config.classifier_min_score}: {wrong}"


async def test_a_request_no_route_is_about_falls_to_the_default(table: RouteTable) -> None:
    for text in UNRELATED:
        decision = await table.decide(_query(text))
        default = table.for_type(_query(text), "")
        assert (decision.route.name, decision.how) == (default.name, "default"), (text, decision.score)
        assert decision.score < table.config.classifier_min_score
