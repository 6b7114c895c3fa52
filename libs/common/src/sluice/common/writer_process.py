"""A writer process: a child that writes files for a busy process, off its interpreter.

The inference server hands what it records (collected payloads, spans) to a child process
rather than formatting and writing it in a thread of its own: a thread shares the
server's GIL and its core's caches with the requests (bench/README.md, tracing). Batches
go to the child as frames on its stdin: a 4-byte length, then `marshal` bytes (plain
tuples, lists, dicts, strings, numbers: serialized in C, microseconds per batch). The
child reads frames until its stdin ends (the parent closed it, or died), writes what it
got and exits; it may answer on its stdout (one line per message, `on_line`).
"""

from __future__ import annotations

import contextlib
import marshal
import signal
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

import structlog

FRAME = struct.Struct("<I")

log = structlog.get_logger("sluice.common.writer_process")


class WriterProcess:
    """The parent's side: starts the child, sends it batches, starts another if it died."""

    def __init__(self, argv: list[str], on_line: Callable[[bytes], None] | None = None) -> None:
        self._argv = argv
        self._on_line = on_line
        self._process: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self._lock = threading.Lock()  # batches from several threads go in whole

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    def start(self) -> None:
        self._process = self._spawn()

    def send(self, batch: list[Any]) -> bool:
        """Send one batch; False when it could not be (the child died as it was sent).
        ValueError when the batch holds what `marshal` cannot write."""
        data = marshal.dumps(batch)
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:  # it died: another takes over
                log.warning(
                    "writer_process_restarted",
                    argv=self._argv[1:3],
                    exit_code=process and process.returncode,
                )
                process = self._process = self._spawn()
            try:
                assert process.stdin is not None
                process.stdin.write(FRAME.pack(len(data)))
                process.stdin.write(data)
                process.stdin.flush()
            except (OSError, ValueError) as exc:  # a broken pipe
                log.warning("writer_process_failed", argv=self._argv[1:3], error=str(exc))
                return False
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """End the child's input and wait for it to write what it was sent."""
        with self._lock:
            process = self._process
            if process is None:
                return
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("writer_process_slow_to_stop", pid=process.pid)
                process.kill()
                process.wait()
        for reader in self._readers:
            reader.join(timeout=5)

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if self._on_line else subprocess.DEVNULL,
        )
        if self._on_line is not None:
            reader = threading.Thread(
                target=self._read, args=(process,), name="writer-lines", daemon=True
            )
            reader.start()
            self._readers = [r for r in self._readers if r.is_alive()] + [reader]
        return process

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None and self._on_line is not None
        for line in process.stdout:
            self._on_line(line)


def frames(stream: IO[bytes]) -> Iterator[list[Any]]:
    """In the child: the batches on `stream` (its stdin), until it ends.

    SIGTERM and SIGINT are ignored from here on: the parent's stop (or a Ctrl-C to its
    group) must not cut what the parent sends last; the end of stdin ends the child."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while len(header := stream.read(FRAME.size)) == FRAME.size:
        (size,) = FRAME.unpack(header)
        data = stream.read(size)
        if len(data) < size:
            return
        yield marshal.loads(data)  # noqa: S302 - frames of the parent process only
