"""What recall reads in a memory's words, beside its embedding (English and French, the users' languages).

- :func:`speaks_of_user`: a message in the first person (I, my, je, j', mon…) says something of its user; a
  request ("Give me a recipe…", "Écris un poème…") says nothing, yet sits near every later request.
- :func:`content_stems`: the stems of a text's content words (stop words of both languages left out, each
  word stemmed both ways: a question and the memory that answers it often share one word — "frère", "phone").
  Dense embeddings of a small model miss such plain overlaps; the pair is what hybrid search combines.
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
