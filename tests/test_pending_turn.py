"""The pending turn (moteur.gateway.turns.PendingTurn): what a session keeps while a turn waits for the
caller's tool results. Its MongoDB document keeps the shape it had as a plain dict, so that the sessions
already stored still load; it goes through the session's document both ways."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from moteur.gateway.sessions import Session, SessionStore, new_message
from moteur.gateway.tooling import ClientTool
from moteur.gateway.turns import PendingTurn, TurnInput, TurnSettings
from moteur.runtime.mongo import Insert, Update
from moteur.v1 import common_pb2

LOOKUP = ClientTool("crm_lookup", "Look a customer up in the CRM",
                    {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
                    {"type": "object"})

# A pending turn as the gateway wrote it before PendingTurn existed, as MongoDB gives it back (naive UTC).
STORED: dict[str, Any] = {
    "id": "01J9ZQ3V8Y6M2F1K7T4W5X0ABC",
    "calls": [{"id": "call_0_0", "name": "crm_lookup", "arguments_json": '{"email": "ada@example.com"}'}],
    "rounds": 1,
    "expires_at": datetime(2031, 5, 4, 12, 30, 0),
    "lease_until": datetime(2031, 5, 4, 12, 15, 0),
    "memory_prompt": "Known about the user: prefers email.",
    "route": {"memory": "used", "memories": "m1,m2"},
    "question": {"_id": "01J9ZQ3T0000000000000000QQ", "content": "Is Ada a customer?",
                 "created_at": datetime(2031, 5, 4, 12, 14, 58)},
    "turn": {"request_type": common_pb2.REQUEST_TYPE_UNSPECIFIED, "priority": common_pb2.PRIORITY_NORMAL,
             "model_hint": "", "max_output_tokens": 0, "use_tools": True, "allow_model_substitution": False,
             "tool_choice": "", "client_tools": [{"name": "crm_lookup", "description": "Look a customer up in the CRM",
                                                  "input_schema": {"type": "object",
                                                                   "properties": {"email": {"type": "string"}},
                                                                   "required": ["email"]},
                                                  "output_schema": {"type": "object"}}],
             "output_format": 0, "output_template": ""},
}


def _session_doc(pending: dict[str, Any] | None) -> dict[str, Any]:
    now = datetime(2031, 5, 4, 12, 15, 0)
    doc = {"_id": "01J9ZQ3S0000000000000000SS", "tenant": "acme", "user": "ada", "title": "", "created_at": now,
           "updated_at": now, "message_count": 2, "metadata": {}, "recent": []}
    if pending is not None:
        doc["pending"] = pending
    return doc


def _pending() -> PendingTurn:
    now = datetime.now(UTC)
    turn = TurnInput("", "ada", "Is Ada a customer?", common_pb2.REQUEST_TYPE_UNSPECIFIED, common_pb2.PRIORITY_HIGH,
                     "gpt-test", 300, tool_choice="crm_lookup", client_tools=(LOOKUP,),
                     output_format=common_pb2.FILE_FORMAT_UNSPECIFIED, allow_model_substitution=True)
    return PendingTurn("01J9ZQ3V8Y6M2F1K7T4W5X0ABC", ({"id": "call_0_0", "name": "crm_lookup",
                                                       "arguments_json": "{}"},),
                       2, now + timedelta(minutes=15), now, "", {"memory": "off"}, new_message("user", turn.message),
                       turn.continuation())


def test_a_pending_turn_survives_its_document() -> None:
    pending = _pending()
    assert PendingTurn.from_doc(pending.to_doc()) == pending


def test_a_pending_turn_stored_in_the_former_shape_loads_and_writes_back_the_same() -> None:
    pending = PendingTurn.from_doc(copy.deepcopy(STORED))
    assert pending.id == STORED["id"] and pending.rounds == 1
    assert pending.calls == ({"id": "call_0_0", "name": "crm_lookup",
                              "arguments_json": '{"email": "ada@example.com"}'},)
    assert pending.expires_at == datetime(2031, 5, 4, 12, 30, 0)
    assert pending.question.id == "01J9ZQ3T0000000000000000QQ" and pending.question.role == "user"
    assert pending.question.content == "Is Ada a customer?"
    assert pending.turn.client_tools == (LOOKUP,)
    assert pending.to_doc() == STORED
    assert list(pending.to_doc()) == list(STORED) and list(pending.to_doc()["turn"]) == list(STORED["turn"])


def test_the_turn_settings_stored_before_files_and_substitution_load_with_their_defaults() -> None:
    older = {k: v for k, v in STORED["turn"].items()
             if k not in ("output_format", "output_template", "allow_model_substitution")}
    settings = TurnSettings.from_doc(older)
    assert (settings.output_format, settings.output_template, settings.allow_model_substitution) == (0, "", False)
    assert (settings.json_schema, settings.json_output, settings.temperature, settings.stop, settings.top_p) == (
        "", False, None, (), None)


def test_the_answers_shape_and_sampling_are_kept_when_set() -> None:
    turn = TurnInput("", "ada", "Is Ada a customer?", json_schema='{"type": "object"}', json_output=True,
                     temperature=0.0, stop=("END",), top_p=0.5)
    settings = turn.continuation()
    stored = settings.to_doc()
    assert (stored["json_schema"], stored["temperature"], stored["stop"], stored["top_p"]) == (
        '{"type": "object"}', 0.0, ["END"], 0.5)
    assert TurnSettings.from_doc(stored) == settings


def test_a_continued_turn_has_the_settings_of_the_turn_it_continues() -> None:
    pending = PendingTurn.from_doc(copy.deepcopy(STORED))
    session = Session.from_doc(_session_doc(STORED))
    turn = TurnInput.continued(session, pending.question.content, pending.turn)
    assert (turn.session_id, turn.user, turn.message) == (session.id, "ada", "Is Ada a customer?")
    assert turn.client_tools == (LOOKUP,) and turn.use_memory is False and turn.use_tools is True
    original = _pending()
    again = TurnInput.continued(session, "q", original.turn)
    assert again.continuation() == original.turn


def test_a_session_reads_its_pending_turn() -> None:
    assert Session.from_doc(_session_doc(None)).pending is None
    assert Session.from_doc(_session_doc(copy.deepcopy(STORED))).pending == PendingTurn.from_doc(STORED)


def _store() -> SessionStore:
    db = {"sessions": SimpleNamespace(full_name="moteur.sessions"),
          "messages": SimpleNamespace(full_name="moteur.messages")}
    return SessionStore(db)  # turn_writes only builds operations


def test_the_turn_writes_store_the_pending_turn_as_its_document() -> None:
    store, pending = _store(), _pending()
    new = SessionStore.new("acme", "ada")
    created = store.turn_writes(new, [pending.question], pending)[-1]
    assert isinstance(created, Insert) and created.document["pending"] == pending.to_doc()

    stored = Session.from_doc(_session_doc(copy.deepcopy(STORED)))
    asking = store.turn_writes(stored, [new_message("assistant", "asking")], pending)[-1]
    assert isinstance(asking, Update)
    assert asking.update["$set"]["pending"] == pending.to_doc() and "$unset" not in asking.update
    done = store.turn_writes(stored, [new_message("assistant", "done")])[-1]
    assert isinstance(done, Update) and done.update["$unset"] == {"pending": ""}
