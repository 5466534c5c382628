"""What recall reads in a memory's words, beside its embedding (English and French, the users' languages).

- :func:`speaks_of_user`: a message in the first person (I, my, je, j', mon…) says something of its user; a
  request ("Give me a recipe…", "Écris un poème…") says nothing, yet sits near every later request.
- :func:`content_stems`: the stems of a text's content words (stop words of both languages left out, each
  word stemmed both ways: a question and the memory that answers it often share one word — "frère", "phone").
  Dense embeddings of a small model miss such plain overlaps; the pair is what hybrid search combines.
- :func:`same_question`: whether two questions say the same words in the same order, but for function words,
  politeness, casing, punctuation, inflection and how numbers are written — what the response cache requires
  beside the embeddings' nearness, which cannot tell "5 km to miles" from "5 miles to km" (cosine 0.997).
"""

from __future__ import annotations

import re
from functools import lru_cache

import snowballstemmer
from stop_words import get_stop_words

_FIRST_PERSON = re.compile(r"\b(?:i|my|mine|myself|we|our|je|mon|ma|mes|nous|notre|nos)\b|\b[ij]['\u2019]",
                           re.IGNORECASE)
_WORD = re.compile(r"\w+")
_STOP_WORDS = frozenset(get_stop_words("en")) | frozenset(get_stop_words("fr"))
_STEMMERS = (snowballstemmer.stemmer("english"), snowballstemmer.stemmer("french"))
# Function words and politeness only (the stop-word lists above hold "km", "end", "causes", "important"…):
# two questions differing in one of these ask the same; question words (what, why, combien…) are kept.
_FUNCTION_WORDS = frozenset("""
a an the of to in on at by for from with into onto about as and or but if than then so do does did done doing is
are was were be been being am have has had i me my mine you your yours we us our he him his she her it its they them
their this that these those there here can could would should will shall may might must please kindly just
le la les l un une des du de d au aux en dans sur sous par pour avec sans et ou mais si que qu est sont était être été
ai as avons avez ont je j moi mon ma mes tu te t toi ton ta tes il elle on nous vous ils elles leur leurs lui se s son
sa ses ce c cet cette ces ceci cela ça y peux peut pouvez pourrais pourriez puis svp stp plait plaît merci dis dites
""".split())
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _body(text: str) -> str:
    return text.split(": ", 1)[1] if text.startswith(("user: ", "assistant: ")) else text


def speaks_of_user(text: str) -> bool:
    """True when the message states something in the first person (its "user: " prefix aside)."""
    return _FIRST_PERSON.search(_body(text)) is not None


@lru_cache(maxsize=4096)
def content_stems(text: str) -> frozenset[str]:
    words = [w for w in _WORD.findall(_body(text).lower().replace("\u2019", "'"))
             if len(w) > 2 and not w.isdigit() and w not in _STOP_WORDS]
    return frozenset(stemmer.stemWord(w) for w in words for stemmer in _STEMMERS)


QuestionWords = tuple[frozenset[str] | str, ...]


def same_question(first: str, second: str) -> bool:
    """True when the two say the same content words (stemmed in English or French) in the same order, and the
    same numbers ("1,000" is "1000", "5.0" is "5")."""
    return same_words(question_words(first), question_words(second))


def same_words(words: QuestionWords, others: QuestionWords) -> bool:
    return len(words) == len(others) and all(
        word & other if isinstance(word, frozenset) and isinstance(other, frozenset) else word == other
        for word, other in zip(words, others, strict=True))


def question_words(text: str) -> QuestionWords:
    """A question's content words in order, each the set of its stems (or a number, normalised). Not cached: a
    question may be long, and one per word would make a cache of them cost megabytes each."""
    words: list[frozenset[str] | str] = []
    for word in _WORD.findall(_NUMBER.sub(lambda m: f" {_number(m.group())} ", text.lower().replace("\u2019", "'"))):
        if word in _FUNCTION_WORDS:
            continue
        words.append(word if word[0].isdigit() else frozenset(stemmer.stemWord(word) for stemmer in _STEMMERS))
    return tuple(words)


def _number(written: str) -> str:
    """A number as one word: "1,000" and "1.000" are 1000 (thousands), "3,5" and "3.50" are 3d5 (decimals)."""
    parts = re.split(r"[.,]", written)
    if len(parts) > 1 and all(len(part) == 3 for part in parts[1:]):
        return str(int("".join(parts)))
    fraction = "".join(parts[1:]).rstrip("0")
    return str(int(parts[0])) + (f"d{fraction}" if fraction else "")
