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
"""

from __future__ import annotations

import asyncio
import os
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
    Secret,
    Timeout,
    Unavailable,
    UntrustedServer,
    Watch,
    __version__,
)
from ._native import Client as _NativeClient

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
        resubscribed following a daemon restart): re-read everything. Refusals raise here
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
    """``Client`` for asyncio: the same calls as coroutines, run on an executor thread.

    The blocking client releases the GIL while it waits, so concurrent ``get`` calls (for
    example under ``asyncio.gather``) do not stall the event loop. Connecting happens in the
    constructor and is quick (a local socket).
    """

    def __init__(
        self,
        socket_path: Optional[PathLike] = None,
        *,
        cache: bool = False,
        executor: Optional[Executor] = None,
    ) -> None:
        self._client = Client(socket_path, cache=cache)
        self._executor = executor

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def get(self, name: str) -> Secret:
        """Reads a secret."""
        secret: Secret = await self._run(self._client.get, name)
        return secret

    async def get_str(self, name: str) -> str:
        """Reads a secret as UTF-8 text."""
        text: str = await self._run(self._client.get_str, name)
        return text

    async def status(self) -> List[Dict[str, Any]]:
        """Describes every secret the caller may read."""
        rows: List[Dict[str, Any]] = await self._run(self._client.status)
        return rows

    async def refresh(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """Admin only: fetches one secret (or all) from its source now."""
        rows: List[Dict[str, Any]] = await self._run(self._client.refresh, name)
        return rows

    async def watch(self, names: Optional[List[str]] = None) -> "AsyncWatch":
        """Watches secrets for changes; ``async for event in await client.watch([...])``."""
        watch: Watch = await self._run(self._client.watch, names)
        return AsyncWatch(watch, self._executor)

    async def close(self) -> None:
        """Closes the connection."""
        self._client.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()


class AsyncWatch:
    """``Watch`` for asyncio: ``async for event in watch``. Each wait runs on an executor
    thread (the GIL is released while it waits); ``aclose()`` ends it promptly."""

    def __init__(self, watch: Watch, executor: Optional[Executor] = None) -> None:
        self._watch = watch
        self._executor = executor

    @property
    def names(self) -> List[str]:
        """The names watched."""
        return self._watch.names

    def _next(self) -> Optional[ChangeEvent]:
        return next(self._watch, None)

    def __aiter__(self) -> AsyncIterator[ChangeEvent]:
        return self

    async def __anext__(self) -> ChangeEvent:
        loop = asyncio.get_running_loop()
        event: Optional[ChangeEvent] = await loop.run_in_executor(self._executor, self._next)
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Ends the watch."""
        self._watch.close()

    async def __aenter__(self) -> "AsyncWatch":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()
