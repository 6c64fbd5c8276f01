"""The failover daemon's ping, at the application level (pure codec and verdict).

The patent's peers ping the scheduler; an ICMP echo only proves that its kernel lives, so a
node whose processes died (crash, OOM kill, `kill -9`) kept "answering" while its buckets
failed. Here the ping is a UDP datagram to the node process itself (the admin port's number,
UDP), and the answer says what a peer needs to judge the *service*: the node's name, whether
it holds the scheduler role and in which term, and whether its proxy accepts connections. A
node whose admin side answers but whose proxy does not is a failed node.

Both messages are authenticated with a key derived from the cluster secret (HMAC-SHA256,
truncated to 16 bytes), and the answer echoes the request's random nonce: nobody on the front
network can keep a dead scheduler "alive" with forged answers or replays.

Wire format (big-endian):
    request: b"DLBH" | version 1 | kind 1 | nonce 8 | mac 16
    answer:  b"DLBH" | version 1 | kind 2 | nonce 8 | term u32 | flags u8 | len u8 | name | mac 16
flags: bit 0 = holds the scheduler role, bit 1 = its proxy is healthy.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

MAGIC = b"DLBH"
VERSION = 1
KIND_REQUEST = 1
KIND_ANSWER = 2
NONCE_LEN = 8
MAC_LEN = 16
FLAG_SCHEDULER = 1
FLAG_PROXY_OK = 2
_HEAD = struct.Struct("!4sBB8s")
_ANSWER = struct.Struct("!IBB")
MAX_NAME = 255


class HeartbeatError(ValueError):
    """A datagram that is not a valid heartbeat message for this cluster."""


def heartbeat_key(secret: bytes) -> bytes:
    """A key of its own for the heartbeat, so its MACs can never pass for a cookie's."""
    return hmac.new(secret, b"dlba heartbeat v1", hashlib.sha256).digest()


@dataclass(frozen=True)
class Ping:
    nonce: bytes


@dataclass(frozen=True)
class Answer:
    nonce: bytes
    name: str
    term: int
    scheduler: bool
    proxy_ok: bool


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]


def encode_ping(key: bytes, ping: Ping) -> bytes:
    if len(ping.nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    body = _HEAD.pack(MAGIC, VERSION, KIND_REQUEST, ping.nonce)
    return body + _mac(key, body)


def encode_answer(key: bytes, answer: Answer) -> bytes:
    name = answer.name.encode()
    if len(answer.nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    if len(name) > MAX_NAME:
        raise ValueError("node name too long")
    if not 0 <= answer.term <= 0xFFFFFFFF:
        raise ValueError("term out of range")
    flags = (FLAG_SCHEDULER if answer.scheduler else 0) | (FLAG_PROXY_OK if answer.proxy_ok else 0)
    body = (_HEAD.pack(MAGIC, VERSION, KIND_ANSWER, answer.nonce)
            + _ANSWER.pack(answer.term, flags, len(name)) + name)
    return body + _mac(key, body)


def decode(key: bytes, data: bytes) -> Ping | Answer:
    """Either message, checked (magic, version, length, MAC); HeartbeatError otherwise."""
    if len(data) < _HEAD.size + MAC_LEN:
        raise HeartbeatError("too short")
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    magic, version, kind, nonce = _HEAD.unpack_from(body)
    if magic != MAGIC or version != VERSION:
        raise HeartbeatError("not a heartbeat of this version")
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise HeartbeatError("bad MAC")
    if kind == KIND_REQUEST:
        if len(body) != _HEAD.size:
            raise HeartbeatError("request of the wrong length")
        return Ping(nonce)
    if kind != KIND_ANSWER or len(body) < _HEAD.size + _ANSWER.size:
        raise HeartbeatError("unknown kind or short answer")
    term, flags, n = _ANSWER.unpack_from(body, _HEAD.size)
    raw = body[_HEAD.size + _ANSWER.size:]
    if len(raw) != n:
        raise HeartbeatError("answer of the wrong length")
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise HeartbeatError("name is not UTF-8") from None
    return Answer(nonce, name, term, bool(flags & FLAG_SCHEDULER), bool(flags & FLAG_PROXY_OK))


def scheduler_alive(answer: Answer | None, expected_name: str) -> bool:
    """The ping verdict a follower feeds to the election: the node it follows answered, still
    holds the role, and its proxy works. A restarted process (no role), a node that stood
    down, or one whose proxy is dead is no scheduler to follow."""
    return (answer is not None and answer.name == expected_name and answer.scheduler
            and answer.proxy_ok)
