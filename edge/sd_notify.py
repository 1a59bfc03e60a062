"""A tiny client of systemd's notify protocol: readiness, reloading, watchdog and stopping.

Under a ``Type=notify`` unit systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). A
state is one datagram of ``KEY=value`` lines sent to that socket. Outside systemd (a terminal, a
container, the tests) there is no socket and every call is a no-op.

The protocol is a few lines of socket code, so this does not pull in a dependency. Sending never
raises: a lost datagram means, at worst, that systemd restarts the agent, while an exception here
would stop the agent for certain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends states to systemd's notify socket.

    Args:
        socket_address: ``NOTIFY_SOCKET``; None disables every call.
        watchdog_usec: ``WATCHDOG_USEC``; None when the unit has no watchdog.
    """

    def __init__(self, *, socket_address: str | None, watchdog_usec: int | None = None) -> None:
        self.socket_address = socket_address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._warned = False

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> SystemdNotifier:
        """The notifier systemd configured for this process (a no-op one outside systemd).

        ``WATCHDOG_PID``, when set, names the process the watchdog is meant for; another process
        that inherited the variables does not feed it.
        """
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        usec: int | None = None
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if not watchdog_pid or watchdog_pid == str(pid):
            try:
                usec = int(env.get("WATCHDOG_USEC", ""))
            except ValueError:
                usec = None
        return cls(socket_address=env.get("NOTIFY_SOCKET"), watchdog_usec=usec)

    @classmethod
    def take_from_environ(
        cls, environ: dict[str, str] | os._Environ[str] | None = None
    ) -> SystemdNotifier:
        """`from_environ`, then the variables are removed, as sd_notify's `unset_environment`
        does: a command the agent runs (the clock's `timedatectl`, a notification hook) must
        not speak for the service. Without systemd, timedatectl sent ``ERRNO=112`` to it."""
        env = os.environ if environ is None else environ
        notifier = cls.from_environ(env)
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """True when running under systemd's notify protocol."""
        return self.socket_address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half the unit's WatchdogSec), or None."""
        if self.socket_address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def notify(self, *states: str) -> bool:
        """Send `states` (``KEY=value``) in one datagram; True if it was sent."""
        address = self.socket_address
        if address is None or not states:
            return False
        # A leading '@' names a socket in the abstract namespace, spelled with a NUL byte.
        target = "\0" + address[1:] if address.startswith("@") else address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # never stall the event loop on a full socket queue
                sock.sendto("\n".join(states).encode(), target)
        except OSError as exc:
            if not self._warned:  # once: a dead socket would otherwise log every ping
                log.warning("cannot notify systemd at %s: %s", address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd the service is up (``READY=1``), with an optional status line."""
        return self.notify("READY=1", *((f"STATUS={status}",) if status else ()))

    def watchdog(self) -> bool:
        """One watchdog ping (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """Tell systemd a config reload started (``RELOADING=1``); `ready` ends it."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1_000}")

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        return self.notify("STOPPING=1")

    async def feed_watchdog(self) -> None:
        """Ping the watchdog at half its interval until cancelled; return at once without one.

        Run it as a task of the agent's TaskGroup: if the event loop stalls, the pings stop and
        systemd restarts the agent, which is the point of the watchdog.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)
