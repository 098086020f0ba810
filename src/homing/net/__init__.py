"""The one listener framework: the only asyncio + ssl code besides the sessions and app.

- `stream`: `Stream` (what sessions are written against), `TCPStream`, `TLSInfo`
- `memory`: `MemoryStream`, the in-memory fake for session unit tests
- `listener`: `Listeners` and `ServiceSpec` (bind, accept, limits, logging, shutdown)
- `tls`: `TLSContexts` (server/client contexts, reload) and `generate_self_signed`
"""

from homing.net.listener import Handler, Listeners, ServiceSpec
from homing.net.memory import MemoryStream
from homing.net.stream import Stream, TCPStream, TLSInfo
from homing.net.tls import TLSConfigError, TLSContexts, client_context, generate_self_signed

__all__ = [
    "Handler",
    "Listeners",
    "MemoryStream",
    "ServiceSpec",
    "Stream",
    "TCPStream",
    "TLSConfigError",
    "TLSContexts",
    "TLSInfo",
    "client_context",
    "generate_self_signed",
]
