"""Server-side user lookup and replay protection (docs/protocols.md 1.2, 1.4, 1.5.2, 1.6).

One :class:`UserValidator` is shared by all connections of an inbound, like V2Ray's
``TimedUserValidator`` plus ``SessionHistory``. Time comes only from the injected clock.

* AEAD: every user's AuthID key decrypts the first 16 bytes; CRC32, ``ts >= 0`` and
  ``|ts - now| <= 120`` must hold; then a replay filter remembers the AuthID for 120..240 s
  (two generations rotated every 120 s, each capped at 100 000 entries like V2Ray's cuckoo
  filters: a full generation rejects, as a full cuckoo filter does).
  :meth:`UserValidator.export_replay` and :meth:`~UserValidator.import_replay` carry the
  filter across a restart (beyond V2Ray; the file is :mod:`raybridge.replay`'s business):
  each AuthID with its own timestamp, kept while ``ts + 120 >= now``, i.e. while the time
  check alone would still accept it.
* Legacy: a table of ``HMAC-MD5(id, ts)`` for every user, every ID and every second in
  ``[now - 120, now + 120]``, refreshed lazily when at least 10 s of clock time have passed.
  An entry can be "tainted" after a failed legacy handshake and is refused from then on.
* Session history: ``(primary id, body key, body IV)`` seen in the last 180 s is refused.
* Drain size: V2Ray seeds ``math/rand`` with a CRC-64 over ``HMAC-SHA256("VMESSBSKDF", id)``
  of the users configured before the first connection; see :meth:`UserValidator.drain_size`.
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from collections.abc import Callable, Iterable, Iterator

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from raybridge.protocols.vmess.account import User
from raybridge.protocols.vmess.gorand import GoRand, crc64_ecma_update
from raybridge.protocols.vmess.primitives import randbelow

__all__ = ["AEADMatch", "UserValidator"]

Clock = Callable[[], float]
Urandom = Callable[[int], bytes]

AUTH_ID_WINDOW = 120
REPLAY_INTERVAL = 120
REPLAY_CAPACITY = 100_000
LEGACY_WINDOW = 120
LEGACY_REFRESH = 10
SESSION_TTL = 180
SESSION_PURGE = 30
SESSION_CAPACITY = 1_000_000


class AEADMatch:
    """Outcome of an AuthID lookup: ``user`` set on success, ``replay`` on a replayed AuthID."""

    __slots__ = ("replay", "user")

    def __init__(self, user: User | None, replay: bool = False) -> None:
        self.user = user
        self.replay = replay


class _LegacyEntry:
    __slots__ = ("tainted", "ts", "user")

    def __init__(self, user: User, ts: int) -> None:
        self.user = user
        self.ts = ts
        self.tainted = False


class _UserRecord:
    __slots__ = ("auth_id_decryptor", "hashers", "last_sec", "user")

    def __init__(self, user: User, now: int) -> None:
        self.user = user
        # ECB decrypts each 16-byte block independently, so one context serves every lookup.
        self.auth_id_decryptor: CipherContext = Cipher(
            algorithms.AES(user.auth_id_key), modes.ECB()
        ).decryptor()
        self.hashers = [
            hmac.new(id_bytes, digestmod=hashlib.md5)
            for id_bytes in (user.id_bytes, *user.alter_ids)
        ]
        self.last_sec = now - LEGACY_WINDOW - 1


class UserValidator:
    def __init__(self, users: Iterable[User] = (), *, clock: Clock) -> None:
        self._clock = clock
        self._records: list[_UserRecord] = []
        self._legacy: dict[bytes, _LegacyEntry] = {}
        self._legacy_by_ts: dict[int, list[bytes]] = {}
        self._legacy_refreshed = clock()
        # AuthID -> the timestamp it carries (what export_replay needs; lookups stay O(1)).
        self._replay_current: dict[bytes, int] = {}
        self._replay_previous: dict[bytes, int] = {}
        self._replay_swapped: int | None = None
        # AuthIDs seen by an earlier process (import_replay) -> their timestamp: refused
        # while ts + AUTH_ID_WINDOW >= now; emptied once all have expired.
        self._replay_imported: dict[bytes, int] = {}
        self._sessions: dict[tuple[bytes, bytes, bytes], float] = {}
        self._sessions_purged = clock()
        self._behavior_seed = 0
        self._behavior_fused = False
        self._drain_params: tuple[int, int] | None = None
        for user in users:
            self.add(user)

    # -- users ---------------------------------------------------------------------------------

    @property
    def users(self) -> list[User]:
        return [record.user for record in self._records]

    def add(self, user: User) -> None:
        now = int(self._clock())
        record = _UserRecord(user, now)
        self._records.append(record)
        self._generate(record, now)
        if not self._behavior_fused:
            digest = hmac.new(b"VMESSBSKDF", user.id_bytes, hashlib.sha256).digest()
            self._behavior_seed = crc64_ecma_update(self._behavior_seed, digest)

    def remove(self, email: str) -> bool:
        """Remove the first user whose email matches case-insensitively (as V2Ray does)."""
        wanted = email.lower()
        for index, record in enumerate(self._records):
            if record.user.email.lower() == wanted:
                self._drop(index)
                return True
        return False

    def discard(self, user: User) -> bool:
        """Remove the user equal to ``user`` (id, alterId, level and email), email or not."""
        for index, record in enumerate(self._records):
            if record.user == user:
                self._drop(index)
                return True
        return False

    def _drop(self, index: int) -> None:
        record = self._records.pop(index)
        user = record.user
        for key in [k for k, entry in self._legacy.items() if entry.user is user]:
            del self._legacy[key]
        for ts, keys in list(self._legacy_by_ts.items()):
            kept = [k for k in keys if k in self._legacy]
            if kept:
                self._legacy_by_ts[ts] = kept
            else:
                del self._legacy_by_ts[ts]

    # -- AEAD AuthID (1.5.2) --------------------------------------------------------------------

    def match_aead(self, auth_id: bytes) -> AEADMatch:
        now = int(self._clock())
        for record in self._records:
            block = record.auth_id_decryptor.update(auth_id)
            if zlib.crc32(block[:12]) != int.from_bytes(block[12:16], "big"):
                continue
            ts = int.from_bytes(block[:8], "big", signed=True)
            if ts < 0 or abs(ts - now) > AUTH_ID_WINDOW:
                continue
            if not self._replay_check(bytes(auth_id), now, ts):
                return AEADMatch(None, replay=True)
            return AEADMatch(record.user)
        return AEADMatch(None)

    def _replay_check(self, auth_id: bytes, now: int, ts: int) -> bool:
        """True (and remember it) if ``auth_id`` is new; False if seen in the last 120..240 s."""
        if self._replay_swapped is None:
            self._replay_swapped = now
        elapsed = now - self._replay_swapped
        if elapsed >= REPLAY_INTERVAL:
            if elapsed >= 2 * REPLAY_INTERVAL:
                self._replay_previous = {}
            else:
                self._replay_previous = self._replay_current
            self._replay_current = {}
            self._replay_swapped = now
            imported = self._replay_imported
            if imported:
                self._replay_imported = {
                    a: t for a, t in imported.items() if t + AUTH_ID_WINDOW >= now
                }
        if auth_id in self._replay_current or auth_id in self._replay_previous:
            return False
        if self._replay_imported:
            seen = self._replay_imported.get(auth_id)
            if seen is not None and seen + AUTH_ID_WINDOW >= now:
                return False
        if len(self._replay_current) >= REPLAY_CAPACITY:
            return False
        self._replay_current[auth_id] = ts
        return True

    def export_replay(self) -> Iterator[tuple[bytes, int]]:
        """The AuthIDs the replay filter holds that a client could still get accepted by
        the time check (``ts + 120 >= now``), each with the timestamp it carries: what a
        restarted server must go on refusing (:meth:`import_replay`)."""
        now = int(self._clock())
        for table in (self._replay_imported, self._replay_previous, self._replay_current):
            for auth_id, ts in table.items():
                if ts + AUTH_ID_WINDOW >= now:
                    yield auth_id, ts

    def import_replay(self, entries: Iterable[tuple[bytes, int]]) -> int:
        """Refuse these AuthIDs (from :meth:`export_replay` of an earlier process) as
        replays; entries the time check refuses anyway (``ts + 120 < now``) and malformed
        ones (not 16 bytes) are dropped. At most twice the filter's capacity is kept.
        Returns how many were kept."""
        now = int(self._clock())
        imported = self._replay_imported
        limit = 2 * REPLAY_CAPACITY
        for auth_id, ts in entries:
            if len(imported) >= limit:
                break
            if len(auth_id) == 16 and ts + AUTH_ID_WINDOW >= now:
                imported[bytes(auth_id)] = ts
        return len(imported)

    # -- legacy table (1.4) ---------------------------------------------------------------------

    def _generate(self, record: _UserRecord, now: int) -> None:
        begin = max(record.last_sec + 1, now - LEGACY_WINDOW)
        end = now + LEGACY_WINDOW
        legacy = self._legacy
        by_ts = self._legacy_by_ts
        user = record.user
        for ts in range(begin, end + 1):
            ts_bytes = ts.to_bytes(8, "big", signed=True)
            keys = by_ts.setdefault(ts, [])
            for base in record.hashers:
                h = base.copy()
                h.update(ts_bytes)
                key = h.digest()
                legacy[key] = _LegacyEntry(user, ts)
                keys.append(key)
        record.last_sec = max(record.last_sec, end)

    def _refresh_legacy(self, now_f: float) -> None:
        now = int(now_f)
        for record in self._records:
            self._generate(record, now)
        cutoff = now - LEGACY_WINDOW
        for ts in [t for t in self._legacy_by_ts if t < cutoff]:
            for key in self._legacy_by_ts.pop(ts):
                entry = self._legacy.get(key)
                if entry is not None and entry.ts == ts:
                    del self._legacy[key]
        self._legacy_refreshed = now_f

    def match_legacy(self, auth: bytes) -> tuple[User, int] | None:
        """The user and timestamp behind a legacy AUTH, or None (unknown, expired or tainted)."""
        now = self._clock()
        if abs(now - self._legacy_refreshed) >= LEGACY_REFRESH:
            self._refresh_legacy(now)
        self._behavior_fused = True
        entry = self._legacy.get(bytes(auth))
        if entry is None or entry.tainted:
            return None
        return entry.user, entry.ts

    def taint(self, auth: bytes) -> None:
        """Refuse this legacy AUTH from now on (V2Ray's ``BurnTaintFuse``)."""
        entry = self._legacy.get(bytes(auth))
        if entry is not None:
            entry.tainted = True

    # -- session history (1.6) ------------------------------------------------------------------

    def check_session(self, user: User, key: bytes | bytearray, iv: bytes | bytearray) -> bool:
        """Record (user, key, IV); False if it was already seen in the last 180 s."""
        now = self._clock()
        sessions = self._sessions
        if now - self._sessions_purged >= SESSION_PURGE or len(sessions) >= SESSION_CAPACITY:
            for sid in [s for s, expiry in sessions.items() if expiry <= now]:
                del sessions[sid]
            self._sessions_purged = now
            while len(sessions) >= SESSION_CAPACITY:  # oldest first: insertion order
                del sessions[next(iter(sessions))]
        sid = (user.id_bytes, bytes(key), bytes(iv))
        expiry = sessions.get(sid)
        if expiry is not None and expiry > now:
            return False
        sessions.pop(sid, None)
        sessions[sid] = now + SESSION_TTL
        return True

    # -- drain size (1.6) -----------------------------------------------------------------------

    def fuse_behavior_seed(self, urandom: Urandom) -> None:
        """Freeze the per-server seed. V2Ray does this when the first connection starts: users
        added later no longer change it. With no users at all the seed is random."""
        self._behavior_fused = True
        if self._behavior_seed == 0:
            self._behavior_seed = int.from_bytes(urandom(8), "big")

    def drain_size(self, urandom: Urandom) -> int:
        """Bytes from the start of a connection that V2Ray 4.34 reads before it hangs up on a
        failed handshake: ``base + 16 + 38 + rand(0 .. max - 1)``, where ``base`` (0..3265)
        and ``max`` (1..64) are the first two rolls of Go's ``math/rand`` seeded with the
        per-server seed, and the last term is random per connection (``server.go``)."""
        self.fuse_behavior_seed(urandom)
        if self._drain_params is None:
            rng = GoRand(self._behavior_seed)
            base = rng.intn(3266)
            rand_max = rng.intn(64) + 1
            self._drain_params = (base, rand_max)
        base, rand_max = self._drain_params
        rolled = randbelow(urandom, rand_max) if rand_max > 1 else 0
        return base + 16 + 38 + rolled

    @property
    def drain_params(self) -> tuple[int, int] | None:
        """``(base, max)`` once fused (for tests and diagnostics)."""
        if not self._behavior_fused:
            return None
        if self._drain_params is None:
            rng = GoRand(self._behavior_seed)
            self._drain_params = (rng.intn(3266), rng.intn(64) + 1)
        return self._drain_params
