"""Read credentials from the local secretd daemon.

    import secretd

    client = secretd.Client()                  # $SECRETD_SOCKET, /run/secretd/secretd.sock, ...
    key = client.get("trading_api_key")        # secretd.Secret; repr() never shows the value
    sign(key.expose())                         # bytes, as late as possible

Every call that waits on the daemon releases the GIL. A Client may be shared by threads, and
survives os.fork() (the child reconnects) and daemon restarts (it reconnects by itself).

    for event in client.watch(["trading_api_key"]):   # blocks; Ctrl-C works
        if event.kind == "changed" or event.kind == "lagged":
            key = client.get("trading_api_key")

    client = secretd.Client(cache=True)   # gets served from locked local memory, kept
                                          # current by a watch

    async with secretd.AsyncClient() as client:   # asyncio, natively (no executor thread)
        key = await client.get("trading_api_key")
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, AsyncIterator, Dict, List, Optional, Type, Union

from ._native import (
    ChangeEvent,
    ConnectError,
    Error,
    NotFound,
    PermissionDenied,
    ProtocolError,
    Revoked,
    Secret,
    Timeout,
    Unavailable,
    UntrustedServer,
    Watch,
    __version__,
)
from ._native import AsyncClient as _NativeAsyncClient
from ._native import AsyncWatch as _NativeAsyncWatch
from ._native import Client as _NativeClient
from ._native import LoopReads as _LoopReads

__all__ = [
    "AsyncClient",
    "AsyncWatch",
    "ChangeEvent",
    "Client",
    "ConnectError",
    "Error",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "Revoked",
    "Secret",
    "Timeout",
    "Unavailable",
    "UntrustedServer",
    "Watch",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]


class Client:
    """A connection to the secretd daemon.

    ``socket_path`` defaults to ``$SECRETD_SOCKET``, then ``/run/secretd/secretd.sock`` if it
    exists, then this user's ``secretd serve --dev`` socket. Raises ``ConnectError`` when no
    daemon answers. Use it as a context manager, or call ``close()``.

    With ``cache=True`` values this client reads are kept in its own locked, no-dump memory and
    served without asking the daemon, until a change event, a lag, a disconnect or the value's
    expiry drops them (a watch on its own connection delivers the events).
    """

    def __init__(self, socket_path: Optional[PathLike] = None, *, cache: bool = False) -> None:
        path = os.fspath(socket_path) if socket_path is not None else None
        self._native = _NativeClient(path, cache)

    @property
    def socket_path(self) -> str:
        """The daemon's socket path."""
        return os.fspath(self._native.socket_path)

    def get(self, name: str) -> Secret:
        """Reads a secret. Raises NotFound, PermissionDenied, Unavailable or another Error."""
        return self._native.get(name)

    def get_str(self, name: str) -> str:
        """Reads a secret and decodes it as UTF-8 (Python strings cannot be wiped)."""
        return self._native.get(name).expose().decode("utf-8")

    def status(self) -> List[Dict[str, Any]]:
        """Describes every secret the caller may read: source, version, state, times. Never values."""
        return self._native.status()

    def refresh(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """Admin only: fetches one secret (or all) from its source now; one dict per secret."""
        return self._native.refresh(name)

    def watch(self, names: Optional[List[str]] = None) -> Watch:
        """Watches secrets for changes (all you may read, when ``names`` is empty).

        Iterate the result for ``ChangeEvent``s; they never carry values: call ``get`` for the
        new one. A "lagged" event means changes may have been missed (also after the watch
        resubscribed following a daemon restart): re-read everything. A "rotation_requested"
        event means GSM's rotation schedule asks for a new version (nothing served changed;
        automation can add one). Refusals raise here
        (``NotFound``, ``PermissionDenied``). ``close()`` ends the iteration from any thread.
        """
        return self._native.watch(names)

    @property
    def cached(self) -> bool:
        """Whether the client-side cache is on."""
        return self._native.cached

    def close(self) -> None:
        """Closes the connection. Further calls raise ``secretd.Error``."""
        self._native.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._native.closed

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"secretd.Client({self.socket_path!r}, {state})"


class AsyncClient:
    """``Client`` for asyncio: the same calls as coroutines, natively async.

    ``get`` is driven by the running event loop itself: the request is written at once and the
    loop, which waits in ``epoll`` anyway, settles the call when the daemon's answer arrives
    (``loop.add_reader``), so no thread is involved. Up to 8 reads run at once, each on a
    connection of its own; more queue. The other calls (and ``get`` with ``cache=True``) run on
    secretd's own tokio runtime (two threads per process, made anew after ``os.fork()``) and
    their results come back to the event loop. There is no executor thread, and the GIL is
    never held while waiting. Cancelling a task mid-call is safe: the exchange under way is
    finished and its answer discarded, so the next call never sees it and no reconnect is
    paid. Connecting happens in the constructor and is quick (a local socket). ``executor=``
    is accepted for compatibility and ignored, with a ``DeprecationWarning``. A client
    belongs to one event loop at a time (used from another, it starts new connections).
    """

    def __init__(
        self,
        socket_path: Optional[PathLike] = None,
        *,
        cache: bool = False,
        executor: Optional[Executor] = None,
    ) -> None:
        if executor is not None:
            warnings.warn(
                "secretd.AsyncClient(executor=...) is deprecated and ignored: "
                "the client is natively async and uses no executor",
                DeprecationWarning,
                stacklevel=2,
            )
        path = os.fspath(socket_path) if socket_path is not None else None
        self._native = _NativeAsyncClient(path, cache)
        # Reads on the event loop; a cached client reads through its cache instead.
        self._reads = None if cache else _LoopReads(self._native.socket_path)

    @property
    def socket_path(self) -> str:
        """The daemon's socket path."""
        return os.fspath(self._native.socket_path)

    async def get(self, name: str) -> Secret:
        """Reads a secret. Raises NotFound, PermissionDenied, Unavailable or another Error."""
        if self._reads is not None:
            return await self._reads.get(name)
        hit = self._native.cached_get(name)
        if hit is not None:
            return hit
        return await self._native.get(name)

    async def get_str(self, name: str) -> str:
        """Reads a secret as UTF-8 text (Python strings cannot be wiped)."""
        secret = await self.get(name)
        return secret.expose().decode("utf-8")

    async def status(self) -> List[Dict[str, Any]]:
        """Describes every secret the caller may read. Never values."""
        return await self._native.status()

    async def refresh(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """Admin only: fetches one secret (or all) from its source now."""
        return await self._native.refresh(name)

    async def watch(self, names: Optional[List[str]] = None) -> "AsyncWatch":
        """Watches secrets for changes; ``async for event in await client.watch([...])``."""
        return AsyncWatch(await self._native.watch(names))

    @property
    def cached(self) -> bool:
        """Whether the client-side cache is on."""
        return self._native.cached

    async def close(self) -> None:
        """Closes the client. Further calls raise ``secretd.Error``."""
        self._native.close()
        if self._reads is not None:
            self._reads.close()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._native.closed

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"secretd.AsyncClient({self.socket_path!r}, {state})"


class AsyncWatch:
    """A watch for asyncio: ``async for event in watch``. Survives daemon restarts (a "lagged"
    event after resubscribing); ``aclose()`` ends it promptly and closes its connection."""

    def __init__(self, native: _NativeAsyncWatch) -> None:
        self._native = native

    @property
    def names(self) -> List[str]:
        """The names watched."""
        return self._native.names

    def __aiter__(self) -> AsyncIterator[ChangeEvent]:
        return self

    async def __anext__(self) -> ChangeEvent:
        return await self._native.__anext__()

    async def aclose(self) -> None:
        """Ends the watch."""
        self._native.close()

    async def __aenter__(self) -> "AsyncWatch":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()
