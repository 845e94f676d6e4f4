"""Relays kernel ports from the server's host into a Swarm overlay network.

This file is a program, not a module of the server: the Swarm back end copies it next to a
control socket and runs it with the environment image's own ``python3`` inside the server
instance's network sandbox, a container on the server's engine that is attached both to a
network the server reaches (its bridge) and to the instance's overlay, which a host never joins.
Standard library only, Python 3.8+.

The server tells it what to relay through a Unix socket in a folder only the server's user can
reach, one JSON request per line:

    {"map": {"bind": "172.17.0.5", "ports": [20001, ...], "target": "198.19.1.7"}}
    {"unmap": [20001, ...]}
    {"ping": true}

and it answers ``{"ok": true}`` or ``{"error": "why"}``. A mapped port accepts connections on
``bind`` and pipes each one to the same port on ``target`` (the kernel task's overlay address).
While the kernel is still starting, connecting upstream is retried for a few seconds instead of
dropping the client, so the first ZeroMQ connections of a new kernel go through at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from typing import Any

CONNECT_FOR = 10.0  # seconds a client waits for the kernel to listen
ATTEMPT = 0.1  # seconds one connection attempt may take (the overlay answers in < 1 ms)
CHUNK = 1 << 16


class Port:
    def __init__(self, server: asyncio.AbstractServer, bind: str, target: str) -> None:
        self.server, self.bind, self.target = server, bind, target
        self.pipes: set[asyncio.Task[None]] = set()

    def drop_pipes(self) -> None:
        for task in self.pipes:
            task.cancel()


class Relay:
    def __init__(self) -> None:
        self.ports: dict[int, Port] = {}

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        if "map" in request:
            spec = request["map"]
            for port in spec["ports"]:
                await self.map(spec["bind"], int(port), spec["target"])
        elif "unmap" in request:
            for port in request["unmap"]:
                self.unmap(int(port))
        elif "ping" not in request:
            return {"error": f"unknown request {sorted(request)}"}
        return {"ok": True}

    async def map(self, bind: str, port: int, target: str) -> None:
        current = self.ports.get(port)
        if current is not None and current.bind == bind:
            if current.target != target:  # a restarted kernel: its old connections are dead
                current.target = target
                current.drop_pipes()
            return
        if current is not None:
            self.unmap(port)
        server = await asyncio.start_server(
            lambda r, w: self.accept(port, r, w), bind, port, reuse_address=True
        )
        self.ports[port] = Port(server, bind, target)

    def unmap(self, port: int) -> None:
        current = self.ports.pop(port, None)
        if current is not None:
            current.server.close()
            current.drop_pipes()

    async def accept(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        entry = self.ports.get(port)
        task = asyncio.current_task()
        if entry is None or task is None:
            writer.close()
            return
        entry.pipes.add(task)
        try:
            await self.pipe(entry, port, reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            entry.pipes.discard(task)
            writer.close()

    async def pipe(
        self, entry: Port, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_FOR
        while True:
            try:
                # A first SYN to a task whose address the overlay has not learnt yet is lost,
                # and the kernel would resend it only after a second: try again sooner.
                connecting = asyncio.open_connection(entry.target, port)
                up_reader, up_writer = await asyncio.wait_for(connecting, ATTEMPT)
                break
            except (OSError, asyncio.TimeoutError):  # noqa: UP041 (Python < 3.11 in images)
                if loop.time() > deadline:
                    return
                await asyncio.sleep(0.01)
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:  # ZeroMQ disables Nagle on its own sockets: so must the relay
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            up_writer.close()


async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def serve(path: str) -> None:
    relay = Relay()

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = await relay.handle(json.loads(line))
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a previous life's
    old = os.umask(0o177)  # the socket: its owner's only
    try:
        server = await asyncio.start_unix_server(control, path)
    finally:
        os.umask(old)
    print(f"relay: listening for requests on {path}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
