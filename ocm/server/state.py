"""
Rooms kept across a restart (PROTOCOL 1.2 §4, "Restarts").

When the daemon stops with C{--keep-rooms} it writes every room a restart
can keep, with everything that defines it: members (UDP members served
1.2: a browser's socket or a 1.1 client cannot be carried over), tokens,
keys, addresses, counters and replay windows, SEND windows, seqs, history,
host, bans and mutes. Started again within C{timeout} seconds, it restores
them and the members carry on with the same tokens and keys.

AES-GCM never sees a nonce twice under one key (docs/security.md): the
server's counter for a member (C{Member.sent}) is saved after the last
datagram sent under it and nothing is sent after the save (the room
service is frozen); a state is restored at most once (the file is removed
before the rooms are served) and never after a newer one was written (each
state has a generation, and the highest generation ever restored is kept
in a file of its own beside it, written before the rooms are served).

The file: JSON, mode 0600, written to a temporary file in the same
directory, flushed and renamed over the old one, with a format number;
binary fields in base64. It holds keys: it is as secret as the TLS key.
"""

from __future__ import annotations

import base64
import json
import os
from array import array
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.logger import Logger

from ocm.server.history import History
from ocm.server.limits import TokenBucket
from ocm.server.moderation import BanList
from ocm.server.passwords import PasswordHash
from ocm.server.replay import ReplayWindow
from ocm.server.rooms import DETACHED, Member, Room, RoomService, V12, keepable as keepable_member
from ocm.server.sends import SendWindow
from ocm.wire.names import name_key

FORMAT = 1
STATE_FILE = "rooms.state"
GENERATION_FILE = "rooms.generation"

log = Logger()


class StateError(Exception):
    """A saved state that is not restored, and why (for the log)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def keepable(room: Room) -> bool:
    """A room a restart can keep: its host is a member a restart can carry over."""
    return room.host is not None and keepable_member(room.host)


# -- to JSON -------------------------------------------------------------------


def _member(m: Member) -> dict[str, Any]:
    sends = m.sends
    return {
        "name": m.name,
        # A browser's socket cannot be kept: it resumes with its secret.
        "transport": "udp" if m.transport is None else "detached",
        "resume": _b64(m.resume),
        "token": m.token,
        "key": _b64(m.key),
        "ip": m.ip,
        "address": list(m.address) if m.address is not None else None,
        "sent": m.sent,
        "window": [m.window.highest, m.window._seen],
        "sends": None if sends is None else {
            "highest": sends.highest,
            "seqs": _b64(sends.seqs.tobytes()),
            "refusals": {str(k): v for k, v in (sends.refusals or {}).items()},
        },
        "muted": m.muted,
        "joined_at": m.joined_at,
        "bucket": m.bucket.tokens,
    }


def _history(h: History | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {
        "first": h.first,
        "msg_first": h.msg_first,
        "events": [_b64(e) for e in h._events],
        "messages": list(h._messages),
    }


def _room(room: Room) -> dict[str, Any]:
    pw = room.password
    return {
        "name": room.name,
        "password": None if pw is None else {"salt": _b64(pw.salt), "digest": _b64(pw.digest),
                                             "n": pw.n, "r": pw.r, "p": pw.p},
        "host": room.host.name if room.host is not None else "",
        "seq": room.seq,
        "events": room.events,
        "created_at": room.created_at,
        "owner_key": room.owner_key,
        "bans": room.bans.state(),
        "history": _history(room.history),
        "members": [_member(m) for m in room.members.values() if keepable_member(m)],
    }


def snapshot(service: RoomService, now: float, generation: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "generation": generation,
        "saved_at": now,
        "timeout": service.timeout,
        "rooms": [_room(r) for r in service.rooms.values() if keepable(r)],
    }


# -- the files -------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Atomically: a 0600 temporary file beside C{path}, synced, renamed over it, the directory synced."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _generation(directory: Path) -> int:
    try:
        return int((directory / GENERATION_FILE).read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError:
        raise StateError(f"{GENERATION_FILE} is not a number")


def save(service: RoomService, directory: Path, now: float) -> tuple[int, int]:
    """Write the rooms a restart can keep; (rooms, members) written."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    generation = _generation(directory) + 1
    state = snapshot(service, now, generation)
    # The generation is taken before the state exists, so a state is
    # always newer than every one restored before it.
    _write_private(directory / GENERATION_FILE, f"{generation}\n".encode())
    _write_private(directory / STATE_FILE, json.dumps(state, separators=(",", ":")).encode())
    return len(state["rooms"]), sum(len(r["members"]) for r in state["rooms"])


def take(directory: Path, now: float) -> dict[str, Any] | None:
    """
    Read the saved state once: it is removed, and its generation recorded
    as restored, before it is returned; None if there is none. A state
    that must not be restored raises L{StateError} (and is removed too).
    """
    path = directory / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    os.unlink(path)
    try:
        state = json.loads(raw)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise StateError(f"unknown format {state.get('format') if isinstance(state, dict) else '?'!r}")
        generation = int(state["generation"])
        restored = _generation(directory)
        if generation < restored:
            raise StateError(
                f"generation {generation} is not newer than the last one written ({restored}): "
                "an old copy, never restored twice"
            )
        age = now - float(state["saved_at"])
        if age > float(state["timeout"]) or age < -5:
            raise StateError(f"saved {age:.0f} s ago, more than the timeout ({state['timeout']:g} s)")
    except (ValueError, KeyError, TypeError) as e:
        raise StateError(f"unreadable ({type(e).__name__})")
    # Restored at most once: a second start finds a generation it has seen.
    _write_private(directory / GENERATION_FILE, f"{generation + 1}\n".encode())
    return state


# -- back to rooms ---------------------------------------------------------------


def restore(service: RoomService, state: dict[str, Any], now: float) -> tuple[int, int]:
    """Put the saved rooms back into C{service}; (rooms, members) restored."""
    rooms = members = 0
    for saved in state["rooms"]:
        try:
            room = _restore_room(service, saved, now)
        except (ValueError, KeyError, TypeError) as e:
            log.warn("a saved room was not restored ({why})", why=type(e).__name__)
            continue
        if room is not None:
            rooms += 1
            members += len(room.members)
    return rooms, members


def _restore_room(service: RoomService, saved: dict[str, Any], now: float) -> Room | None:
    name = saved["name"]
    if name_key(name) in service.rooms:
        return None
    pw = saved["password"]
    password = None if pw is None else PasswordHash(
        _unb64(pw["salt"]), _unb64(pw["digest"]), int(pw["n"]), int(pw["r"]), int(pw["p"])
    )
    history = None
    h = saved["history"]
    if service.history and h is not None:
        history = History(service.history, service.history_bytes)
        history.first, history.msg_first = int(h["first"]), int(h["msg_first"])
        history._events.extend(_unb64(e) for e in h["events"])
        history._messages.extend(int(s) for s in h["messages"])
        history.size = sum(len(e) for e in history._events) + len(history._events) * 49
    room = Room(name, password, history)
    room.seq, room.events = int(saved["seq"]), int(saved["events"])
    room.created_at = float(saved["created_at"])
    room.owner_key = saved["owner_key"]
    room.bans = BanList.from_state(saved["bans"])
    host_name = saved["host"]
    for sm in saved["members"]:
        bucket = TokenBucket(service.member_rate, service.member_burst, now)
        bucket.tokens = min(float(sm["bucket"]), service.member_burst)
        udp = sm.get("transport", "udp") == "udp"
        member = Member(sm["name"], room, sm["ip"], now, bucket, None if udp else DETACHED, V12)
        if udp:
            key = _unb64(sm["key"])
            if len(key) != 32:
                raise ValueError("key")
            member.token = sm["token"]
            member.key = key
            member.aead = AESGCM(key)
            member.address = tuple(sm["address"]) if sm["address"] else None
        else:
            member.resume = _unb64(sm.get("resume", ""))
            if len(member.resume) != 32:
                raise ValueError("resume")
        member.sent = int(sm["sent"])
        member.window = ReplayWindow()
        member.window.highest, member.window._seen = int(sm["window"][0]), int(sm["window"][1])
        if sm["sends"] is not None:
            sends = SendWindow()
            sends.highest = int(sm["sends"]["highest"])
            sends.seqs = array("Q")
            sends.seqs.frombytes(_unb64(sm["sends"]["seqs"]))
            if len(sends.seqs) != len(SendWindow().seqs):
                raise ValueError("sends")
            refusals = {int(k): str(v) for k, v in sm["sends"]["refusals"].items()}
            sends.refusals = refusals or None
            member.sends = sends
        member.muted = bool(sm["muted"])
        member.joined_at = float(sm["joined_at"])
        service.adopt(room, member)
        if member.name == host_name:
            room.host = member
    if room.host is None:
        # Its host could not be kept: nobody could close it, so it goes.
        for m in list(room.members.values()):
            service.disown(m)
        return None
    service.rooms[name_key(name)] = room
    service.rooms_by_address[room.owner_key] += 1
    return room
