"""A server run as a child process that can be started, stopped gracefully, killed and
restarted: the embedded Mosquitto of the demo and the benchmark, and the test servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

_START_DEADLINE_S = 20.0
_STOP_DEADLINE_S = 10.0
_POLL_S = 0.02


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class StartStop:
    """A context manager over ``start`` and ``stop``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServerProcess(StartStop):
    """Subclasses say how to find the program (``executable``), how to run it
    (``command``), when it is ready (``ready``) and where it logs (``log_paths``)."""

    name = "server"
    install_hint = ""
    stop_deadline_s = _STOP_DEADLINE_S

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.output_path = workdir / f"{self.name}.out"
        self.extra_env: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    # -- what a subclass provides ----------------------------------------------------------

    def executable(self) -> str | None:
        raise NotImplementedError

    def command(self, executable: str) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration before each start."""

    @property
    def log_paths(self) -> list[Path]:
        return [self.output_path]

    # -- life cycle ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_running:
            raise RuntimeError(f"{self.name} is already running")
        executable = self.executable()
        if executable is None:
            raise RuntimeError(f"{self.name!r} not found on PATH; {self.install_hint}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with self.output_path.open("ab") as out:
            self._proc = subprocess.Popen(
                self.command(executable),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.extra_env},
                # Its own session: a Ctrl-C in the terminal must not stop the server before
                # its clients have drained; the owner stops it.
                start_new_session=True,
            )
        # Being in its own session, the server would outlive a test or demo that forgot to
        # stop it, holding its port; stop it when this object or the interpreter goes.
        weakref.finalize(self, _terminate, self._proc)
        deadline = time.monotonic() + _START_DEADLINE_S
        while not self.ready():
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {code} during start\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"{self.name} was not ready within {_START_DEADLINE_S:.0f} s\n"
                    + self.log_tail()
                )
            time.sleep(_POLL_S)

    def stop(self) -> None:
        """SIGTERM and wait, so the server saves what it holds in memory."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_deadline_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"{self.name} ignored SIGTERM for {self.stop_deadline_s:.0f} s and was killed\n"
                + self.log_tail()
            ) from None

    def kill(self) -> None:
        """SIGKILL: a crash, so whatever was not yet saved is lost."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in self.log_paths:
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts) or f"({self.name} wrote no log)"
