"""Fixtures of the reliability suite (helpers in reliability_kit.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from reliability_kit import Keys

from moteur.devstack.stack import LocalStack
from moteur.runtime.mongo import connect_mongo
from moteur.runtime.settings import MongoSettings


@pytest.fixture(scope="module")
def own_keys() -> Callable[[LocalStack], Awaitable[Keys]]:
    """A factory of :class:`Keys` for a module's own stack (the caller closes it)."""

    async def make(stack: LocalStack) -> Keys:
        return Keys(stack, connect_mongo(MongoSettings(mongo_uri=stack.mongo_uri)))

    return make

