"""A TCP relay in front of a test's own Tansu that reads the Kafka protocol passing through it.

The broker advertises the relay's address, so a worker reaches it only through the relay. The relay counts
the OffsetCommit requests of one consumer group and how each ended (answered without error, answered with
an error, or left unanswered when its connection closed): the count of failed commits, taken on the wire,
independent of the worker. It can also break things as a broker restart does: drop every connection, and
answer commits with an error for a while (the restarted memory-mode broker answered
UNKNOWN_TOPIC_OR_PARTITION until the topics were created again).

Only the request and response headers and the OffsetCommit bodies are read (versions 0-7, the
non-flexible ones aiokafka sends); everything else passes through byte for byte.
"""
from __future__ import annotations

import socket
import struct
import threading
from typing import Optional

from runtime.local.processes import free_port

OFFSET_COMMIT = 8
UNKNOWN_TOPIC_OR_PARTITION = 3


class KafkaRelay:
    def __init__(self, upstream_port: int, port: Optional[int] = None):
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = port or free_port()
        self.group: Optional[str] = None  # whose commits are counted
        self.commit_error = 0  # put into every partition of an OffsetCommit answer; 0: answers pass unchanged
        self.commits_ok = 0
        self.commits_failed = 0
        self._lock = threading.Lock()
        self._links: set[tuple[socket.socket, socket.socket]] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._closed = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def __enter__(self) -> "KafkaRelay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def commits(self) -> tuple[int, int]:
        """(OffsetCommit requests of the group that succeeded, those that failed), so far."""
        with self._lock:
            return self.commits_ok, self.commits_failed

    def drop_connections(self) -> None:
        """Close every connection as a stopping broker does: the clients read end-of-stream. Requests they
        sent and got no answer to count as failed."""
        with self._lock:
            links = list(self._links)
        for client, server in links:
            _shutdown(server, socket.SHUT_RDWR)
            _shutdown(client, socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop_connections()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._links.add((client, server))
            threading.Thread(target=self._serve, args=(client, server), name="relay-link", daemon=True).start()

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        pending: dict[int, int] = {}  # correlation id -> version, of the group's unanswered OffsetCommits
        answers = threading.Thread(target=self._answers, args=(server, client, pending), daemon=True)
        answers.start()
        try:
            while (frame := _read_frame(client)) is not None:
                api_key, version, correlation = struct.unpack_from(">hhi", frame, 4)
                if api_key == OFFSET_COMMIT and self._group_of(frame) == self.group:
                    assert version < 8, f"OffsetCommit v{version} is flexible; the relay reads v0-v7"
                    with self._lock:
                        pending[correlation] = version
                try:
                    server.sendall(frame)
                except OSError:
                    pass  # the broker side is gone: keep reading what the client still sends, unanswered
        finally:
            _shutdown(server, socket.SHUT_RDWR)  # the client is gone: nobody to answer
            answers.join()
            with self._lock:
                self.commits_failed += len(pending)
                self._links.discard((client, server))
            client.close()
            server.close()

    def _answers(self, server: socket.socket, client: socket.socket, pending: dict[int, int]) -> None:
        while (frame := _read_frame(server)) is not None:
            (correlation,) = struct.unpack_from(">i", frame, 4)
            with self._lock:
                version = pending.pop(correlation, None)
            failed = False
            if version is not None:
                frame, failed = self._commit_answer(frame, version)
            try:
                client.sendall(frame)
                delivered = True
            except OSError:
                delivered = False
            if version is not None:
                with self._lock:
                    if failed or not delivered:  # an answer the client never got failed for it too
                        self.commits_failed += 1
                    else:
                        self.commits_ok += 1
            if not delivered:
                break
        _shutdown(client, socket.SHUT_WR)

    def _commit_answer(self, frame: bytes, version: int) -> tuple[bytes, bool]:
        """The answer with every partition's error code replaced by ``commit_error`` (if set), and whether
        any partition failed."""
        out = bytearray(frame)
        at = 8 + (4 if version >= 3 else 0)  # size, correlation id, throttle time from v3
        failed = False
        (topics,) = struct.unpack_from(">i", out, at)
        at += 4
        for _ in range(topics):
            (name_length,) = struct.unpack_from(">h", out, at)
            at += 2 + name_length
            (partitions,) = struct.unpack_from(">i", out, at)
            at += 4
            for _ in range(partitions):
                at += 4  # partition index
                if self.commit_error:
                    struct.pack_into(">h", out, at, self.commit_error)
                (error,) = struct.unpack_from(">h", out, at)
                failed = failed or error != 0
                at += 2
        return bytes(out), failed

    @staticmethod
    def _group_of(frame: bytes) -> str:
        at = 12  # size, api key, version, correlation id
        (client_id_length,) = struct.unpack_from(">h", frame, at)
        at += 2 + max(client_id_length, 0)
        (group_length,) = struct.unpack_from(">h", frame, at)
        return frame[at + 2:at + 2 + group_length].decode()


def _read_frame(sock: socket.socket) -> Optional[bytes]:
    """One size-prefixed Kafka frame (the size included), or None at end of stream."""
    head = _read_exact(sock, 4)
    if head is None:
        return None
    body = _read_exact(sock, struct.unpack(">i", head)[0])
    return None if body is None else head + body


def _read_exact(sock: socket.socket, count: int) -> Optional[bytes]:
    chunks, left = [], count
    while left:
        try:
            chunk = sock.recv(min(left, 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass
