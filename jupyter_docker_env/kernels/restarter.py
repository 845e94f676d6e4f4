"""What a notebook's user sees when a kernel in a container dies, and when it comes back.

jupyter_client's restarter notices a dead kernel and restarts it; jupyter_server then tells the
notebook only "restarting", the cell that was running never ends with a reason, and the kernel's
``execution_state`` keeps what the dead kernel last said ("busy") until something else speaks.
The provisioner knows why a container ended (out of memory at its limit, the Docker engine gone,
an exit code), so :class:`ContainerKernelRestarter`, which :class:`DockerEnvProvisioner` installs
on the kernel managers of a Jupyter server, adds three things:

- before a restart, the cell that was running gets the reason as its last output (a stderr
  stream message parented to its ``execute_request``, sent to every websocket client of the
  kernel, as jupyter_server itself does for rate-limit notices), and ``/api/kernels`` shows it as
  the kernel's ``reason``;
- ``execution_state`` says ``restarting`` during the restart and ``idle`` as soon as the new
  kernel answers a ``kernel_info_request``, in ``/api/kernels`` and to the notebook: a client
  that (re)connects is told the state the server knows (JupyterLab otherwise shows "Unknown" or
  "Starting" after a restart until the next execution, since the new kernel's own status
  messages come before its new connection listens, or answer requests it does not track);
- a kernel that died with the Docker engine is not restarted at all (it could not be): it is
  reported ``dead`` with the reason, its clients are told so, and the restarter stops, instead
  of logging tracebacks every few seconds. A failed restart is logged in one line and counts
  towards jupyter_client's ``restart_limit``.
"""

from __future__ import annotations

import typing as t

from jupyter_client.ioloop.restarter import AsyncIOLoopKernelRestarter
from jupyter_client.session import Session
from tornado.ioloop import IOLoop

#: How long a restarted kernel may take to answer its first kernel_info_request.
READY_TIMEOUT = 60.0


class _CannotRestart(Exception):
    """The kernel died in a way a restart cannot mend (the engine is gone)."""


class ExecutionTracker:
    """Which ``execute_request`` a kernel is running, read from its iopub channel."""

    def __init__(self, km: t.Any) -> None:
        self.parent: dict[str, t.Any] | None = None  # the running request's header
        self.port = km.iopub_port
        self._session = Session(config=km.session.config, key=km.session.key)
        self._stream = km.connect_iopub()
        self._stream.on_recv(self._on_message)

    def _on_message(self, parts: list[bytes]) -> None:
        _idents, fed = self._session.feed_identities(parts)
        msg = self._session.deserialize(fed, content=False)
        if msg["header"]["msg_type"] != "status":
            return
        parent = msg.get("parent_header") or {}
        if parent.get("msg_type") != "execute_request":
            return
        state = self._session.unpack(msg["content"]).get("execution_state")
        if state == "busy":
            self.parent = parent
        elif state == "idle" and self.parent and parent.get("msg_id") == self.parent["msg_id"]:
            self.parent = None

    def close(self) -> None:
        if not self._stream.closed():
            self._stream.close()


class ContainerKernelRestarter(AsyncIOLoopKernelRestarter):
    """jupyter_client's restarter, telling the notebook why its kernel died (see the module)."""

    _tracker: ExecutionTracker | None = None
    _restarts = 0

    # -- tracking what runs ------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        km = self.kernel_manager
        if self._tracker is not None and self._tracker.port != km.iopub_port:
            self._tracker.close()
            self._tracker = None
        if self._tracker is None and km.iopub_port:
            self._tracker = ExecutionTracker(km)

    def stop(self) -> None:
        super().stop()
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    # -- dying and restarting ------------------------------------------------------------------
    def _fire_callbacks(self, event: t.Any) -> None:
        # jupyter_client fires "restart" between noticing the death and restarting: the last
        # moment to tell the notebook why, and to refuse a restart that cannot work.
        provisioner = self.kernel_manager.provisioner
        reason = getattr(provisioner, "exit_reason", None)
        if event == "restart" and reason:
            lost = bool(getattr(provisioner, "engine_lost", False))
            self._tell_clients(reason, restarting=not lost)
            if lost:
                raise _CannotRestart(reason)
        if event == "restart":
            self._set_state("restarting")
            self._restarts += 1
        super()._fire_callbacks(event)

    async def poll(self) -> None:  # type: ignore[override]
        restarts = self._restarts
        try:
            await super().poll()
        except _CannotRestart as exc:
            self._give_up(str(exc), told=True)
            return
        except Exception as exc:  # the restart failed: one line, not a traceback per poll
            provisioner = self.kernel_manager.provisioner
            self.log.error("Kernel %s could not be restarted: %s", self._kernel_id, exc)
            self._restarting = True  # counts towards restart_limit like any failed restart
            if getattr(provisioner, "engine_lost", False):
                self._give_up(getattr(provisioner, "exit_reason", None) or str(exc))
            return
        if self._restarts != restarts:
            self._await_answer()

    def _give_up(self, reason: str, told: bool = False) -> None:
        """The kernel stays dead: say so in /api/kernels and to its clients, stop polling."""
        if not told:  # the restart callbacks did not run: the death showed as a failed poll
            self._tell_clients(reason, restarting=False)
        self.stop()
        self._set_state("dead", reason)
        for connection in self._connections():
            connection.on_restart_failed()  # sends the "dead" status to that client

    def _await_answer(self) -> None:
        """``idle`` once the new kernel answers (jupyter_server would wait for its iopub)."""
        km = self.kernel_manager
        self._set_state("starting")
        shell = km.connect_shell()
        loop = IOLoop.current()

        def done(*_: t.Any) -> None:
            loop.remove_timeout(timeout)
            if not shell.closed():
                shell.close()

        def answered(_msg: t.Any) -> None:
            if getattr(km, "execution_state", None) == "starting":
                self._set_state("idle")
                for connection in self._connections():
                    self._tell_state(connection)
            done()

        timeout = loop.call_later(READY_TIMEOUT, done)
        shell.on_recv(answered)
        km.session.send(shell, "kernel_info_request")

    def add_callback(self, f: t.Callable[..., t.Any], event: str = "restart") -> None:
        super().add_callback(f, event)
        # jupyter_server's websocket connections register here when a client (re)connects
        connection = getattr(f, "__self__", None)
        if event == "restart" and getattr(connection, "kernel_id", None) == self._kernel_id:
            self._tell_state(connection)

    def _tell_state(self, connection: t.Any) -> None:
        """Send a client the execution state the server knows, when it is a settled one."""
        state = getattr(self.kernel_manager, "execution_state", None)
        send = getattr(connection, "_send_status_message", None)  # how jupyter_server does it
        if state in ("idle", "busy") and send is not None:
            send(state)

    # -- the server's side ---------------------------------------------------------------------
    @property
    def _kernel_id(self) -> str:
        return str(getattr(self.kernel_manager, "kernel_id", "?"))

    def _set_state(self, state: str, reason: str | None = None) -> None:
        km = self.kernel_manager
        if hasattr(km, "execution_state"):  # jupyter_server's ServerKernelManager
            km.execution_state = state
        provisioner_reason = getattr(km.provisioner, "exit_reason", None)
        if hasattr(km, "reason") and (reason or provisioner_reason):
            km.reason = reason or provisioner_reason

    def _connections(self) -> list[t.Any]:
        """jupyter_server's websocket connections to this kernel (none outside a server)."""
        mkm = getattr(self.kernel_manager, "parent", None)
        server = getattr(mkm, "parent", None)
        cls = getattr(server, "kernel_websocket_connection_class", None)
        found = list(getattr(cls, "_open_sockets", ()))
        return [c for c in found if getattr(c, "kernel_id", None) == self._kernel_id]

    def _tell_clients(self, reason: str, restarting: bool) -> None:
        """End the running cell, in every client, with why the kernel died."""
        parent = self._tracker.parent if self._tracker else None
        if parent is None:
            return
        then = (
            "It restarts now: its variables are gone."
            if restarting
            else "It cannot be restarted now: start a new kernel once the engine is back."
        )
        text = f"The kernel died: {reason} {then}"
        for connection in self._connections():
            connection.write_stderr(text, parent)
