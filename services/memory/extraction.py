"""Finding candidate facts about a user in one conversation turn.

Two extractors, one contract (a list of :class:`Candidate`):
- :class:`LLMExtractor` asks a model through the router (request type ``extract``) for a JSON object that
  a JSON Schema constrains, then keeps only facts grounded in the user's own words — a small model
  invents, and an invented fact is worse than none;
- :class:`RuleExtractor` reads first-person statements ("my name is…", "I live in…", "I prefer…") with
  patterns; it knows each fact's *slot* (name, home, employer…), which lets a new value replace the old.
The service tries the model first and falls back to the rules when it cannot answer or finds nothing it
can stand behind; the response says which one ran.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import structlog

from moteur.runtime.completion import Complete

log = structlog.get_logger("moteur.memory.extraction")


@dataclass(frozen=True, slots=True)
class Candidate:
    text: str  # third person, one fact: "The user lives in Lyon."
    slot: str = ""  # what the fact is about, when known ("home", "name"): a new value replaces the old
    negated: bool = False  # the user withdrew it ("I no longer live in Lyon")


_ENTITY = r"([A-Za-zÀ-ÿ0-9][\w À-ÿ'\u2019.-]{0,60}?)"
_END = (r"(?=[.,;!?]|\s+(?:and|but|because|so|since|last|this|next|now|anymore|any more|as|for|with|when|where)\b"
        r"|$)")

# (pattern, slot, template): the template is formatted with the pattern's groups.
_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(rf"\bmy name is {_ENTITY}{_END}", re.I), "name", "The user's name is {0}."),
    (re.compile(rf"\b(?:call me|i go by) {_ENTITY}{_END}", re.I), "name", "The user wants to be called {0}."),
    (re.compile(rf"\bi (?:live|am living|'m living) in {_ENTITY}{_END}", re.I), "home", "The user lives in {0}."),
    (re.compile(rf"\bi (?:moved|have moved|'ve moved) to {_ENTITY}{_END}", re.I), "home", "The user lives in {0}."),
    (re.compile(rf"\bi work (?:at|for) {_ENTITY}{_END}", re.I), "employer", "The user works at {0}."),
    (re.compile(rf"\bi work as (?:an? )?{_ENTITY}{_END}", re.I), "job", "The user works as {0}."),
    (re.compile(rf"\bi(?: am|'m) (?:an? )?(\w+ (?:engineer|developer|teacher|doctor|nurse|designer|manager|"
                rf"student|lawyer|writer|chef|scientist)){_END}", re.I), "job", "The user is a {0}."),
    (re.compile(rf"\bi(?: am|'m) allergic to {_ENTITY}{_END}", re.I), "", "The user is allergic to {0}."),
    (re.compile(rf"\bmy (?:favou?rite) ([\w ]{{1,30}}?) is {_ENTITY}{_END}", re.I), "favourite:{0}",
     "The user's favourite {0} is {1}."),
    (re.compile(rf"\bmy ([\w ]{{1,30}}?)(?:'s|\u2019s) name is {_ENTITY}{_END}", re.I), "name-of:{0}",
     "The name of the user's {0} is {1}."),
    (re.compile(rf"\bmy birthday is (?:on )?{_ENTITY}{_END}", re.I), "birthday", "The user's birthday is {0}."),
    (re.compile(rf"\bi (?:really )?(?:love|like|enjoy|prefer) {_ENTITY}{_END}", re.I), "",
     "The user likes {0}."),
    (re.compile(rf"\bi (?:hate|dislike|can't stand|do not like|don't like) {_ENTITY}{_END}", re.I), "",
     "The user dislikes {0}."),
    (re.compile(rf"\bi(?: am|'m) vegetarian|\bi(?: am|'m) vegan{_END}", re.I), "diet", "The user is {0}."),
    (re.compile(rf"\bremember that {_ENTITY}{_END}", re.I), "", "The user asked to remember: {0}."),
]
# French: the same slots, so "J'habite à Paris" replaces "I live in Lyon" and the other way round.
_FR_END = (r"(?=[.,;!?]|\s+(?:et|mais|parce|car|donc|depuis|maintenant|avec|quand|où|pour)\b|$)")
_APOS = "['\\u2019]"
_RULES += [
    (re.compile(rf"\bje m{_APOS}appelle {_ENTITY}{_FR_END}", re.I), "name", "L'utilisateur s'appelle {0}."),
    (re.compile(rf"\bmon (?:nom|prénom) est {_ENTITY}{_FR_END}", re.I), "name", "L'utilisateur s'appelle {0}."),
    (re.compile(rf"\b(?:j{_APOS}habite|je vis|je réside) ((?:à|a|en|aux|au|dans) {_ENTITY}){_FR_END}", re.I),
     "home", "L'utilisateur habite {0}."),
    (re.compile(rf"\bje (?:me suis installée?|suis installée?|ai déménagé) ((?:à|a|en|aux|au|dans) {_ENTITY})"
                rf"{_FR_END}", re.I), "home", "L'utilisateur habite {0}."),
    (re.compile(rf"\bje travaille (?:chez|pour|à la|au|à) {_ENTITY}{_FR_END}", re.I), "employer",
     "L'utilisateur travaille chez {0}."),
    (re.compile(rf"\bje travaille comme {_ENTITY}{_FR_END}", re.I), "job", "L'utilisateur travaille comme {0}."),
    (re.compile(rf"\bje suis allergique ((?:à|aux|au) {_ENTITY}){_FR_END}", re.I), "",
     "L'utilisateur est allergique {0}."),
    (re.compile(rf"\bmon anniversaire est (?:le )?{_ENTITY}{_FR_END}", re.I), "birthday",
     "L'anniversaire de l'utilisateur est le {0}."),
    (re.compile(rf"\b(?:mon|ma) ([\wÀ-ÿ ]{{1,30}}?) préférée? est {_ENTITY}{_FR_END}", re.I), "favourite:{0}",
     "L'utilisateur préfère {1} ({0})."),
    (re.compile(rf"\bj{_APOS}(?:aime|adore|préfère) (?:beaucoup )?{_ENTITY}{_FR_END}", re.I), "",
     "L'utilisateur aime {0}."),
    (re.compile(rf"\bje (?:n{_APOS}aime pas|déteste) {_ENTITY}{_FR_END}", re.I), "", "L'utilisateur n'aime pas {0}."),
    (re.compile(rf"\bsouviens-toi que {_ENTITY}{_FR_END}", re.I), "", "L'utilisateur a demandé de retenir : {0}."),
]
_WITHDRAWN: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(rf"\bje n{_APOS}(?:habite|vis) plus ((?:à|a|en|aux|au|dans) {_ENTITY}){_FR_END}", re.I), "home",
     "L'utilisateur habite {0}."),
    (re.compile(rf"\bje ne travaille plus (?:chez|pour) {_ENTITY}{_FR_END}", re.I), "employer",
     "L'utilisateur travaille chez {0}."),
    (re.compile(rf"\bi (?:no longer|don't|do not) live in {_ENTITY}(?: anymore| any more)?{_END}", re.I), "home",
     "The user lives in {0}."),
    (re.compile(rf"\bi (?:no longer|don't|do not) work (?:at|for) {_ENTITY}(?: anymore| any more)?{_END}", re.I),
     "employer", "The user works at {0}."),
    (re.compile(rf"\bi (?:no longer|don't|do not) (?:like|love|enjoy) {_ENTITY}(?: anymore| any more){_END}", re.I),
     "", "The user likes {0}."),
]


class RuleExtractor:
    name = "rules"

    async def extract(self, user_message: str, assistant_message: str) -> list[Candidate]:
        candidates: list[Candidate] = []
        withdrawn: list[tuple[int, int]] = []  # spans of withdrawn statements: no positive fact from them
        for patterns, negated in ((_WITHDRAWN, True), (_RULES, False)):
            for pattern, slot, template in patterns:
                for match in pattern.finditer(user_message):
                    if not negated and any(s < match.end() and match.start() < e for s, e in withdrawn):
                        continue
                    groups = [g.strip(" '\u2019") for g in match.groups()] or [match.group(0).split()[-1].lower()]
                    text = template.format(*groups)
                    if negated:
                        withdrawn.append(match.span())
                    if not any(c.text == text and c.negated == negated for c in candidates):
                        candidates.append(Candidate(text, slot.format(*[g.lower() for g in groups]), negated))
        return candidates


FACTS_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"facts": {"type": "array", "maxItems": 5,
                             "items": {"type": "string", "minLength": 3, "maxLength": 200}}},
    "required": ["facts"],
}
_SYSTEM = ("You extract lasting facts about the user from their message: names, places, preferences, dates, "
           "decisions. Write each fact as a short sentence starting with 'The user'. Only facts the user "
           "stated. If there are none, return an empty list. Answer with JSON: {\"facts\": [...]}")



class LLMExtractor:
    name = "llm"

    def __init__(self, complete: Complete) -> None:
        self._complete = complete

    async def extract(self, user_message: str, assistant_message: str) -> list[Candidate]:
        answer = await self._complete(_SYSTEM, user_message[:4000], FACTS_SCHEMA)
        try:
            facts = json.loads(answer).get("facts", [])
        except (ValueError, AttributeError):
            log.info("extraction.llm_unparsable", answer=answer[:200])
            return []
        return [Candidate(f.strip()) for f in facts if isinstance(f, str) and _grounded(f, user_message)]


_STOP = {"the", "user", "user's", "users", "is", "a", "an", "and", "of", "to", "in", "has", "likes", "their",
         "they", "with", "for", "on", "at", "who", "that", "was", "be", "are"}


def _grounded(fact: str, source: str) -> bool:
    """At least one content word of the fact appears in what the user wrote."""
    words = {w for w in re.findall(r"[\wÀ-ÿ']+", fact.lower()) if w not in _STOP and len(w) > 2}
    said = set(re.findall(r"[\wÀ-ÿ']+", source.lower()))
    return bool(words & said)
