"""Latency histograms that merge across processes, and reading a process's cost from /proc.

A histogram keeps microsecond values cut to 7 significant bits (under 1.6 % low), so a
worker can record millions of deliveries in a small dict and the runner can add them up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_SIGNIFICANT = 7


def bucket(value_us: int) -> int:
    """The representative value of ``value_us`` (µs): exact below 128, then 7 bits."""
    if value_us < 1 << _SIGNIFICANT:
        return value_us if value_us > 0 else 0
    shift = value_us.bit_length() - _SIGNIFICANT
    return (value_us >> shift) << shift


def merge(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for hist in histograms:
        for value, count in hist.items():
            out[value] = out.get(value, 0) + count
    return out


def percentiles(hist: Mapping[int, int], points: Iterable[float]) -> list[float | None]:
    """Values (µs) at the given percentiles (0..100); None for an empty histogram."""
    total = sum(hist.values())
    wanted = list(points)
    if total == 0:
        return [None] * len(wanted)
    ordered = sorted(hist.items())
    out = []
    for p in wanted:
        rank = max(1, -(-total * p // 100))  # ceil(total * p / 100), at least the first
        seen = 0
        for value, count in ordered:
            seen += count
            if seen >= rank:
                out.append(float(value))
                break
    return out


# --- /proc: what the broker costs ----------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far, by the whole process and by each of its threads (by name)."""

    total: float
    threads: dict[str, float]


def _stat_times(path: str) -> float:
    with open(path) as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def cpu_sample(pid: int) -> CpuSample:
    threads: dict[str, float] = {}
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/comm") as f:
                name = f.read().strip()
            seconds = _stat_times(f"{task_dir}/{tid}/stat")
        except OSError:
            continue  # a thread ended meanwhile
        # libzmq names its threads ZMQbg/IO/0, ZMQbg/Reaper; Python's is the process name.
        key = name if name.startswith("ZMQbg") else "python"
        threads[key] = threads.get(key, 0.0) + seconds
    return CpuSample(_stat_times(f"/proc/{pid}/stat"), threads)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out
