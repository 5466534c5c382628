"""Sessions and their history: create, read a page of messages, list, delete (memory forgets them too)."""

from __future__ import annotations

from moteur.gateway import validation as check
from moteur.gateway.api import convert
from moteur.gateway.api.rpc import Context, authenticated
from moteur.gateway.auth import Authenticator
from moteur.gateway.conversation import Conversation
from moteur.gateway.sessions import SessionStore, parse_session_id
from moteur.runtime.identity import Identity
from moteur.v1 import gateway_pb2


class SessionRpcs:
    def __init__(self, auth: Authenticator, sessions: SessionStore, conversation: Conversation) -> None:
        self.auth = auth
        self._sessions = sessions
        self._conversation = conversation

    @authenticated
    async def CreateSession(self, request: gateway_pb2.CreateSessionRequest, identity: Identity,
                            context: Context) -> gateway_pb2.Session:
        user = convert.required_user(identity, request.user_id)
        title = check.text_at_most(request.title, "title", check.MAX_TITLE_CHARS)
        created = await self._sessions.create(identity.tenant, user, title, check.metadata(request.metadata.entries))
        return convert.session(created)

    @authenticated
    async def GetSession(self, request: gateway_pb2.GetSessionRequest, identity: Identity,
                         context: Context) -> gateway_pb2.GetSessionResponse:
        session_id = parse_session_id(request.session_id)
        size = check.page_size(request.page_size, 50, check.MAX_PAGE_MESSAGES)
        after = convert.message_cursor(request.page_token)
        scope = check.scope(identity, identity.user)
        session = await self._sessions.get(scope, session_id)
        messages, cursor = await self._sessions.messages(scope, session_id, size, after)
        return gateway_pb2.GetSessionResponse(
            session=convert.session(session), messages=[convert.message(m) for m in messages],
            next_page_token=cursor,
        )

    @authenticated
    async def ListSessions(self, request: gateway_pb2.ListSessionsRequest, identity: Identity,
                           context: Context) -> gateway_pb2.ListSessionsResponse:
        user = check.acting_user(identity, request.user_id)
        size = check.page_size(request.page_size, 20, check.MAX_PAGE_SESSIONS)
        sessions, cursor = await self._sessions.list(
            check.scope(identity, user), size, check.page_token(request.page_token)
        )
        return gateway_pb2.ListSessionsResponse(sessions=[convert.session(s) for s in sessions],
                                                next_page_token=cursor)

    @authenticated
    async def DeleteSession(self, request: gateway_pb2.DeleteSessionRequest, identity: Identity,
                            context: Context) -> gateway_pb2.DeleteSessionResponse:
        session_id = parse_session_id(request.session_id)
        deleted = await self._sessions.delete(check.scope(identity, identity.user), session_id)
        await self._conversation.drop_window(identity.tenant, session_id)
        await self._conversation.forget_session(identity.tenant, session_id)
        return gateway_pb2.DeleteSessionResponse(deleted_messages=deleted)
