"""A test-owned Mosquitto broker: its own config dir and free port, stop/restart on the same port.

Use the ``broker`` fixture by naming it (``tests/conftest.py`` provides it; pytest puts ``tests/`` on
``sys.path``), or build one directly::

    with Mosquitto(tmp_path / "broker") as mq:      # started, accepting connections
        ...mq.port...
        mq.stop(); mq.start()                         # same port, same persistence file

Persistence is on (saved on a clean stop), so retained messages, persistent sessions and their
queued QoS 1 messages survive :meth:`Mosquitto.restart`. :meth:`Mosquitto.kill` is a SIGKILL (nothing
saved since the last autosave). With ``users={"name": "password"}`` and ``acl="..."`` the broker
refuses anonymous clients and applies the ACL.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

MOSQUITTO = os.environ.get("MOSQUITTO", shutil.which("mosquitto") or "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        acl: str | None = None,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            f"user {getpass.getuser()}",  # as root, mosquitto would switch to "mosquitto" and lose tmp_path
            "persistence true",
            f"persistence_location {directory / 'data'}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            f"log_dest file {directory / 'mosquitto.log'}",
            "log_type all",
        ]
        if users is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self._write_passwords(users)}"]
        if acl is not None:
            acl_path = directory / "acl"
            acl_path.write_text(acl)
            lines.append(f"acl_file {acl_path}")
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def _write_passwords(self, users: dict[str, str]) -> Path:
        if MOSQUITTO_PASSWD is None:
            pytest.skip("mosquitto_passwd is not installed")
        path = self.directory / "passwd"
        path.write_text("")
        for name, password in users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), name, password], check=True)
        path.chmod(0o600)
        return path

    @property
    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 5.0) -> None:
        if self.process is not None:
            raise RuntimeError("already running")
        if not Path(MOSQUITTO).exists():
            pytest.skip(f"mosquitto is not installed at {MOSQUITTO} (scripts/ensure-services installs it)")
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self._end(signal.SIGKILL, 1.0)
                raise RuntimeError(f"mosquitto exited at start: {err}\n{self.log}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not accept connections on {self.port} within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM: clients are disconnected, persistence is saved."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._end(signal.SIGKILL, 5.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """An anonymous broker on a free port, killed at teardown."""
    with Mosquitto(tmp_path / "mosquitto") as mq:
        yield mq
