"""The control socket between ipsecd and ipsecctl: one JSON object per line, each way.

Request  ``{"command": "sa"}``; answer ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
The socket is root-only (mode 0600): it hands out SA keys for Wireshark, as `setkey -D` would.

>>> import asyncio, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "ipsecd.sock")
>>> async def demo():
...     server = await serve(path, {"ping": lambda: "pong"})
...     answer = await asyncio.to_thread(request, path, "ping")
...     server.close()
...     return answer
>>> asyncio.run(demo())
'pong'
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ipsecd.control")

Handler = Callable[..., Any]


class ControlError(RuntimeError):
    """The daemon refused a command or cannot be reached; the message says which."""


async def serve(path: str, handlers: dict[str, Handler]) -> asyncio.AbstractServer:
    """Answer requests on a unix socket; a handler's exception becomes an error answer, never a crash. A
    handler may return a coroutine: the client waits for its result, the loop does not."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await answer(line)).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def answer(line: bytes) -> dict:
        try:
            message = json.loads(line)
            command = message["command"]
            handler = handlers[command]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": f"not a known request: {line[:80]!r}; "
                                         f"commands: {', '.join(sorted(handlers))}"}
        try:
            result = handler(**message.get("args", {}))
            if inspect.isawaitable(result):  # a command that waits for something (the policy store)
                result = await result
            return {"ok": True, "result": result}
        except Exception as e:  # the daemon keeps running; the caller reads why
            log.exception("control command %s failed", command)
            return {"ok": False, "error": f"{command}: {e}"}

    if os.path.exists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    server = await asyncio.start_unix_server(client, path, limit=1 << 20)
    os.chmod(path, 0o600)
    return server


def request(path: str, command: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one command to ipsecd and return its result; ControlError on any failure."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        reason = e.strerror or e
        raise ControlError(f"cannot talk to ipsecd at {path}: {reason} (is ipsecd running?)") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"ipsecd at {path} sent an unreadable answer") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply["result"]
