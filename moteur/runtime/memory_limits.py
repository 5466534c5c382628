"""What the memory service accepts, stated once for it and for the services that call it.

Memory refuses a longer text (INVALID_ARGUMENT) rather than chunking it: a message or a fact is one unit.
A caller that may hold longer texts (the gateway takes chat messages of 32,768 characters) trims to these,
so a call memory would refuse is never made.
"""

from __future__ import annotations

MAX_TEXT_CHARS = 8192  # one memory's text, a search query, the user's message read by Extract
MAX_REPLY_CHARS = 4 * MAX_TEXT_CHARS  # the answer Extract reads beside the user's message
