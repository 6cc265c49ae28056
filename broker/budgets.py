"""What one source may do across sessions: password guesses, registrations, new rooms.

A session's own limits end with it, and opening a new session costs a client nothing: so
these are kept by nickname, by key and by address, in the chat core's memory (a restart
forgets them, which only ever favours the honest).

Guessing a password is what these are mostly for. Each guess costs the loop a deliberately
slow hash, so the broker does at most a few a second in all; no key or address may use
that up for everyone else, and a name's owner still gets in while someone hammers it:
wrong passwords count against the name from where they came (the address), so the owner
elsewhere is not held back, nor is a key that got in as that name before.

An address is many people when they share a machine (every local user is 127.0.0.1, the
single-machine default), so what an address may do is ADDRESS_SHARE times what one key
may, and stored history is counted by key alone (the disk reserve and the room quota
bound the rest).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from schema import ProtocolError
from schema import protocol as P

SOURCES_REMEMBERED = 100_000  # windows kept (least recently used go first)
ADDRESS_SHARE = 4  # an address may do this many times what one key may


class Windows:
    """Counts of events per key in a sliding window: at most ``limit`` per ``seconds``."""

    def __init__(self, limit: int, seconds: float, clock: Callable[[], float]):
        self.limit, self.seconds, self._clock = limit, seconds, clock
        self._times: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def full(self, key: Hashable) -> bool:
        times = self._times.get(key)
        if times is None:
            return False
        horizon = self._clock() - self.seconds
        while times and times[0] <= horizon:
            times.popleft()
        return len(times) >= self.limit

    def note(self, key: Hashable) -> None:
        times = self._times.pop(key, None) or deque()
        times.append(self._clock())
        self._times[key] = times  # most recently used last
        if len(self._times) > SOURCES_REMEMBERED:
            self._times.popitem(last=False)


Source = tuple[str, object]  # ("key", z85), ("address", ip) or, lacking both, ("peer", id)


class PerSource:
    """The same window for keys (and lone sessions) and, ADDRESS_SHARE times wider, for
    addresses."""

    def __init__(self, limit: int, seconds: float, clock: Callable[[], float]):
        self._one = Windows(limit, seconds, clock)
        self._address = Windows(limit * ADDRESS_SHARE, seconds, clock)

    def _window(self, source: Source) -> Windows:
        return self._address if source[0] == "address" else self._one

    def full(self, sources: list[Source]) -> bool:
        return any(self._window(s).full(s) for s in sources)

    def note(self, sources: list[Source]) -> None:
        for source in sources:
            self._window(source).note(source)


class Budgets:
    def __init__(self, clock: Callable[[], float]):
        self._checks = Windows(P.PASSWORD_CHECKS_PER_SECOND, 1.0, clock)  # broker-wide
        self._guesses = PerSource(P.PASSWORD_CHECKS_PER_MINUTE, 60.0, clock)
        self._failures = Windows(P.FAILURES_PER_NAME, P.FAILURES_WINDOW, clock)  # per name
        self._trusted: OrderedDict[tuple[str, Source], None] = OrderedDict()
        self._registrations = PerSource(P.REGISTRATIONS_PER_HOUR, 3600.0, clock)
        self._creations = PerSource(P.ROOMS_CREATED_PER_HOUR, 3600.0, clock)
        self._clock = clock
        self._stored: OrderedDict[Source, list[float]] = OrderedDict()  # [tokens, when]

    # -- passwords ------------------------------------------------------------------------

    def password_check(self, name: str, sources: list[Source]) -> None:
        """May this source have one more password checked for ``name``? Counts it."""
        if self._guesses.full(sources):
            raise ProtocolError("rate_limited",
                                "Too many password attempts; try again in a minute")
        trusted = any((name, s) in self._trusted for s in _trustworthy(sources))
        if not trusted and self._failures.full((name, _where(sources))):
            raise ProtocolError("rate_limited", f"Too many wrong passwords for {name} "
                                                f"lately; try again later")
        if self._checks.full("all"):
            raise ProtocolError("rate_limited", "Too many password attempts; try again")
        self._checks.note("all")
        self._guesses.note(sources)

    def password_failed(self, name: str, sources: list[Source]) -> None:
        if not any((name, s) in self._trusted for s in _trustworthy(sources)):
            self._failures.note((name, _where(sources)))

    def signed_in(self, name: str, sources: list[Source]) -> None:
        """This source got in as ``name``: others' failures no longer hold it back."""
        for source in _trustworthy(sources):
            self._trusted[(name, source)] = None
            self._trusted.move_to_end((name, source))
        while len(self._trusted) > SOURCES_REMEMBERED:
            self._trusted.popitem(last=False)

    # -- squatting ------------------------------------------------------------------------

    def register(self, sources: list[Source], accounts_of_key: int) -> None:
        """May this source reserve one more nickname? Counts it."""
        if accounts_of_key >= P.REGISTRATIONS_PER_KEY:
            raise ProtocolError("too_many_registrations",
                                f"This key holds {accounts_of_key} nicknames already "
                                f"(at most {P.REGISTRATIONS_PER_KEY})")
        if self._registrations.full(sources):
            raise ProtocolError("too_many_registrations",
                                "Too many registrations from here; try again later")
        self._registrations.note(sources)

    def create_room(self, sources: list[Source]) -> None:
        """May this source create one more room? Counts it."""
        if self._creations.full(sources):
            raise ProtocolError("rate_limited", f"Too many new rooms from here: at most "
                                                f"{P.ROOMS_CREATED_PER_HOUR} an hour")
        self._creations.note(sources)

    # -- disk -----------------------------------------------------------------------------

    def store(self, sources: list[Source], characters: int) -> None:
        """May this source store ``characters`` more of history? Counts them."""
        now = self._clock()
        buckets = []
        for source in _trustworthy(sources):  # by key: an address is many people
            bucket = self._stored.pop(source, None) or [float(P.STORE_BURST), now]
            bucket[0] = min(P.STORE_BURST, bucket[0] + (now - bucket[1]) * P.STORE_RATE)
            bucket[1] = now
            self._stored[source] = bucket
            buckets.append(bucket)
        while len(self._stored) > SOURCES_REMEMBERED:
            self._stored.popitem(last=False)
        if any(b[0] < characters for b in buckets):
            raise ProtocolError("quota_exceeded",
                                f"Storage quota: at most {P.STORE_RATE:g} characters of "
                                f"history a second from here, after "
                                f"{P.STORE_BURST:,} at once; try later")
        for bucket in buckets:
            bucket[0] -= characters


def _where(sources: list[Source]) -> Source:
    """Where guesses come from: the address if known (many keys, one attacker)."""
    return next((s for s in sources if s[0] == "address"), sources[0])


def _trustworthy(sources: list[Source]) -> list[Source]:
    """The sources that stand for one person: the key (or the lone session), not the
    address, which everyone on a machine shares."""
    return [s for s in sources if s[0] != "address"] or sources
