"""The real local models through the gateway: the second model is served with its own chat template, so
no role marker — its template's or another's — leaks into what a user reads."""

from __future__ import annotations

from moteur.devstack.models import CHAT_MODEL, SECOND_MODEL
from moteur.runtime.ids import new_id

ROLE_MARKERS = ("ASSISTANT:", "USER:", "<|im_start|>", "<|im_end|>", "<|endoftext|>")


def _no_marker(text: str) -> None:
    assert text.strip()
    leaked = [marker for marker in ROLE_MARKERS if marker.lower() in text.lower()]
    assert not leaked, f"{leaked} in {text!r}"


async def test_the_second_model_answers_summaries_and_turns_without_role_markers(make_caller) -> None:
    claire = await make_caller(f"t-{new_id().lower()}", "claire")  # her memories stay out of other tests
    text = ("The bakery on Station Road has closed after forty years. Its owner is retiring and found no buyer. "
            "Customers left flowers at the door on the last day.")
    summary = await claire.client.chat(f"Summarize: {text}", request_type="summarize", model_hint=SECOND_MODEL,
                                       max_output_tokens=96)
    assert summary.message.model == SECOND_MODEL
    _no_marker(summary.message.content)

    # A conversation: the history goes back through the template, where a wrong one shows most.
    first = await claire.client.chat("Bonjour ! Je m'appelle Claire et j'habite à Lyon.", model_hint=SECOND_MODEL,
                                     max_output_tokens=48)
    second = await claire.client.chat("Résume ce que je viens de te dire.", session_id=first.session_id,
                                      model_hint=SECOND_MODEL, max_output_tokens=64)
    for reply in (first, second):
        assert reply.message.model == SECOND_MODEL
        _no_marker(reply.message.content)


async def test_the_default_model_knows_the_capital_of_france_in_french(make_caller) -> None:
    claire = await make_caller(f"t-{new_id().lower()}", "claire")
    reply = await claire.client.chat("Quelle est la capitale de la France ?", max_output_tokens=32)
    assert reply.message.model == CHAT_MODEL
    assert "paris" in reply.message.content.lower()
    _no_marker(reply.message.content)
