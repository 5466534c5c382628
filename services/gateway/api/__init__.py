"""moteur.v1.Gateway over gRPC: each group of RPCs in its own module, put together by :func:`gateway_servicer`.

- :mod:`.chat`: Chat, ChatStream, SubmitToolResults, ListModels, ListTools
- :mod:`.sessions`: CreateSession, GetSession, ListSessions, DeleteSession
- :mod:`.memories`: memories and documents, ForgetUser
- :mod:`.files`: files and templates
- :mod:`.admin`: usage, alerts, limits, tenant settings
- :mod:`.convert`: protobuf to the gateway's types and back; :mod:`.rpc`: authentication and assembly
"""

from moteur.gateway.api.admin import AdminRpcs
from moteur.gateway.api.chat import ChatRpcs
from moteur.gateway.api.files import FileRpcs
from moteur.gateway.api.memories import MemoryRpcs
from moteur.gateway.api.rpc import assemble as gateway_servicer
from moteur.gateway.api.sessions import SessionRpcs

__all__ = ["AdminRpcs", "ChatRpcs", "FileRpcs", "MemoryRpcs", "SessionRpcs", "gateway_servicer"]
