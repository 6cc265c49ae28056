"""The workloads, as plans: who connects from which process, which rooms, who sends.

A plan is pure data, made before anything starts, so the runner knows exactly what every
receiver should get and can count what was lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WORKLOADS = ("fanout", "rooms", "dm", "crowd")
IDLE_PER_PROC = 2500  # idle crowd clients driven by one load process


@dataclass(frozen=True)
class ClientSpec:
    """One simulated user."""

    name: str
    creates: tuple[str, ...] = ()  # rooms it makes (before anyone joins)
    joins: tuple[str, ...] = ()  # rooms it enters after they exist
    sid: int | None = None  # its sender id, if it sends
    room: str | None = None  # where it sends; None with a sid means private messages
    idle: bool = False  # connected and heartbeating, nothing else

    @property
    def rooms(self) -> tuple[str, ...]:
        return self.creates + self.joins


@dataclass(frozen=True)
class Plan:
    workload: str
    workers: list[list[ClientSpec]]  # active clients, one list per load process
    idle_workers: list[list[ClientSpec]]  # idle crowd clients, in processes of their own
    rooms: dict[str, list[str]]  # room -> member names (stuck members included)
    senders: list[ClientSpec]  # indexed by sid
    dm_pool: list[str] = field(default_factory=list)  # who private messages go to
    stuck: list[ClientSpec] = field(default_factory=list)  # frozen with SIGSTOP mid-run

    @property
    def clients(self) -> int:
        return (sum(map(len, self.workers)) + sum(map(len, self.idle_workers))
                + len(self.stuck))

    def receivers_of(self, sid: int, echo: bool = True) -> list[str]:
        """Who should see sender ``sid``'s room messages (stuck members excluded; the
        sender itself too if ``echo`` is false: an IRC server sends nobody their own)."""
        sender = self.senders[sid]
        skip = {s.name for s in self.stuck} | (set() if echo else {sender.name})
        return [m for m in self.rooms.get(sender.room or "", []) if m not in skip]


def _room_members(prefix: str, room: str, members: int, senders: int, first_sid: int
                  ) -> list[ClientSpec]:
    out = []
    for j in range(members):
        sid = first_sid + j if j < senders else None
        out.append(ClientSpec(f"{prefix}{j}", creates=(room,) if j == 0 else (),
                              joins=() if j == 0 else (room,), sid=sid,
                              room=room if sid is not None else None))
    return out


def _spread(clients: list[ClientSpec], procs: int) -> list[list[ClientSpec]]:
    """Round-robin, so every room has members in every process; creators end up first."""
    workers: list[list[ClientSpec]] = [[] for _ in range(procs)]
    for i, c in enumerate(clients):
        workers[i % procs].append(c)
    return workers


def make(workload: str, *, procs: int = 2, crowd: int = 1000, stuck: int = 0,
         members: int | None = None) -> Plan:
    """The plan of a workload. ``members`` overrides the room size (fanout, crowd)."""
    procs = max(1, procs)
    rooms: dict[str, list[str]] = {}
    clients: list[ClientSpec] = []
    idle: list[ClientSpec] = []
    pool: list[str] = []
    if workload in ("fanout", "crowd"):
        prefix = "f" if workload == "fanout" else "c"
        clients = _room_members(prefix, "busy", members or 50, 1, 0)
        if workload == "crowd":
            idle = [ClientSpec(f"i{k}", idle=True) for k in range(crowd)]
    elif workload == "rooms":
        for i in range(10):
            clients += _room_members(f"r{i}m", f"room{i}", members or 20, 2, 2 * i)
    elif workload == "dm":
        clients = [ClientSpec(f"d{i}", sid=i) for i in range(members or 100)]
        pool = [c.name for c in clients]
    else:
        raise ValueError(f"unknown workload {workload!r}; one of {', '.join(WORKLOADS)}")
    for c in clients:
        for room in c.rooms:
            rooms.setdefault(room, []).append(c.name)
    # Stuck members: extra members of the first room, each in a process of its own.
    frozen = []
    if stuck:
        target = next(iter(rooms), None)
        if target is None:
            raise ValueError("--stuck needs a workload with rooms")
        for k in range(stuck):
            spec = ClientSpec(f"stuck{k}", joins=(target,))
            frozen.append(spec)
            rooms[target].append(spec.name)
    senders = sorted((c for c in clients if c.sid is not None), key=lambda c: c.sid or 0)
    n_idle_procs = -(-len(idle) // IDLE_PER_PROC)
    return Plan(workload, _spread(clients, procs),
                [idle[k::n_idle_procs] for k in range(n_idle_procs)],
                rooms, senders, pool, frozen)
