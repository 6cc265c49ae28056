"""Results out: JSON lines, a Markdown table (with the issue's targets), a latency plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .brokerproc import ROOT

COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("workload", lambda r: r["workload"] + (" +stuck" if r.get("stuck") else "")
     + ("" if r.get("curve", True) else " (no CURVE)")
     + (" (floor relay)" if r.get("floor") else "")),
    ("mode", lambda r: r["mode"]),
    ("clients", lambda r: r["clients"]),
    ("inbound msg/s", lambda r: f"{r['inbound_per_s']:,.0f}"),
    ("deliveries/s", lambda r: f"{r['deliveries_per_s']:,.0f}"),
    ("p50 ms", lambda r: r["latency_ms"]["p50"]),
    ("p99 ms", lambda r: r["latency_ms"]["p99"]),
    ("p99.9 ms", lambda r: r["latency_ms"]["p99.9"]),
    ("lost", lambda r: r["lost"]),
    ("dup", lambda r: r["duplicated"]),
    ("caught up", lambda r: r["caught_up"]),
    ("broker µs/delivery", lambda r: r["broker_cpu_us_per_delivery"]),
    ("broker µs/inbound", lambda r: r["broker_cpu_us_per_inbound"]),
    ("(python + zmq I/O)", lambda r: "{python} + {zmq_io}".format(
        **r["broker_cpu_split_us_per_inbound"])),
    ("broker cores", lambda r: r["broker_cores"]),
    ("broker RSS MiB", lambda r: r["broker_rss_max_mib"]),
    ("load cores", lambda r: r.get("load_cores")),
]


def table(results: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    rows = ["| " + " | ".join(_cell(get, r) for _, get in COLUMNS) + " |" for r in results]
    return "\n".join([head, rule, *rows])


def _cell(get: Callable[[dict[str, Any]], Any], r: dict[str, Any]) -> str:
    try:
        value = get(r)
    except (KeyError, TypeError):
        return ""
    return "–" if value is None else str(value)


# The targets of issue 5: (what, applies to a result?, measured value, met?)
TARGETS: list[tuple[str, Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], Any],
                    Callable[[Any], bool]]] = [
    ("fanout: broker CPU ≤ 0.45 µs per delivery",
     lambda r: r["workload"] == "fanout" and r["mode"] == "closed" and not r.get("stuck"),
     lambda r: r["broker_cpu_us_per_delivery"], lambda v: v is not None and v <= 0.45),
    ("rooms: broker CPU ≤ 0.45 µs per delivery",
     lambda r: r["workload"] == "rooms" and r["mode"] == "closed",
     lambda r: r["broker_cpu_us_per_delivery"], lambda v: v is not None and v <= 0.45),
    ("dm: broker CPU ≤ 8 µs per inbound message",
     lambda r: r["workload"] == "dm" and r["mode"] == "closed",
     lambda r: r["broker_cpu_us_per_inbound"], lambda v: v is not None and v <= 8),
    ("fanout open loop 2,000 msg/s: p99 ≤ 5 ms, nothing lost",
     lambda r: r["workload"] == "fanout" and r.get("offered_rate") == 2000
     and not r.get("stuck"),
     lambda r: (r["latency_ms"]["p99"], r["lost"]),
     lambda v: v[0] is not None and v[0] <= 5 and v[1] == 0),
    ("crowd 10,000 clients: broker RSS < 1 GiB, busy room p99 ≤ 20 ms",
     lambda r: r["workload"] == "crowd" and r.get("idle_clients", 0) >= 10_000,
     lambda r: (r["broker_rss_max_mib"], r["latency_ms"]["p99"]),
     lambda v: v[0] < 1024 and v[1] is not None and v[1] <= 20),
]


def targets(results: list[dict[str, Any]]) -> str:
    rows = []
    for what, applies, measure, met in TARGETS:
        found = False
        for r in results:
            if (r.get("curve", True) and not r.get("profile") and not r.get("floor")
                    and applies(r)):
                found = True
                value = measure(r)
                shown = " / ".join(map(str, value)) if isinstance(value, tuple) else value
                rows.append(f"| {what} | {shown} | {'met' if met(value) else '**missed**'} |")
        if not found:
            rows.append(f"| {what} | not measured in this set of runs | |")
    if not results:
        return ""
    return "\n".join(["| target (issue 5) | measured | |", "|---|---|---|", *rows])


def stuck_notes(results: list[dict[str, Any]]) -> str:
    out = []
    for r in results:
        s = r.get("stuck")
        if not s:
            continue
        lat = s["others_latency_ms_while_frozen"]
        thawed = "; ".join(
            f"{t['name']}: {'caught up' if t['complete'] else 'NOT caught up'} "
            f"{t['resync_s']} s after SIGCONT, lost {t['lost']}, duplicated "
            f"{t['duplicated']}, out of order {t['reordered']}" for t in s["thawed"])
        out.append(
            f"- {r['workload']} {r['mode']}: {s['members']} member(s) frozen (SIGSTOP) for "
            f"{s['frozen_s']} s. Meanwhile the others received "
            f"{s['others_deliveries_per_s_while_frozen']:,.0f} deliveries/s with p50 "
            f"{lat['p50']} ms, p99 {lat['p99']} ms (whole run: p99 "
            f"{r['latency_ms']['p99']} ms, lost {r['lost']}). The broker removed the frozen "
            f"member {s['removed_by_broker_after_s']} s after SIGSTOP. {thawed}.")
    return "\n".join(out)


def machine() -> str:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "")
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def commit() -> str:
    """The commit measured, marked if the broker's code had changes not committed."""
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True,
                                        text=True, timeout=5).stdout.strip()
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "broker", "schema", "client")
        return f"{head} + local changes" if head and dirty else head
    except (OSError, subprocess.SubprocessError):
        return ""


def markdown(results: list[dict[str, Any]], command: str, plot_name: str | None = None,
             failed: list[dict[str, Any]] = ()) -> str:
    parts = [
        "# zchat benchmark results", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; broker and load share it. Commit "
        f"{(results[0].get('commit') if results else None) or commit() or '?'}.  ",
        "Broker as in production: CURVE on every socket, SQLite persistence on (WAL, "
        "synchronous=NORMAL: one commit per loop turn, survives a broker crash), every "
        "check on; only the per-client rate limit is off (`--rate 0`), as load is not "
        "abuse.  ",
        "Latency: receive time minus send time of every live delivery sent in the "
        "measured window (one host clock). Broker CPU: utime+stime of the broker process "
        "from /proc over the window, divided by the deliveries (resp. inbound messages) of "
        "that window; split into its Python thread and libzmq's I/O thread. *Lost* counts "
        "messages a receiver never got, *caught up* those it fetched from history after "
        "its subscription dropped them (a real client shows them, in order).",
    ]
    if any(r.get("floor") for r in results):
        parts += ["", "*(floor relay)* rows are no broker: the same load against "
                  "`bench/floor.py`, which only decodes, forwards and encodes (CURVE and "
                  "framing as the broker's; no checks, no store). They show what this design "
                  "costs before any chat logic, and never count for a target."]
    parts += ["", table(results), ""]
    goals = targets(results)
    if goals:
        parts += ["## Targets", "", goals, ""]
    notes = stuck_notes(results)
    if notes:
        parts += ["## One stuck client (issue 3)", "", notes, ""]
    if failed:
        parts += ["## Runs that failed", "",
                  *[f"- {f['run']}: {f['failed']}" for f in failed], ""]
    if (Path(ROOT) / "docs" / "bench" / "profile.md").exists():
        parts += ["Where the broker's time goes, what failed and why, and what would move "
                  "the figures: [profile.md](profile.md).", ""]
    if plot_name:
        parts += ["## Latency against load", "", f"![latency against load]({plot_name})", ""]
    return "\n".join(parts)


def append_json(path: str | Path, results: list[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in results:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def plot(results: list[dict[str, Any]], path: str | Path) -> bool:
    """Latency p50/p99 against offered load; False (and no file) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = sorted((r for r in results if r.get("offered_rate")),
                    key=lambda r: r["offered_rate"])
    if not points:
        return False
    x = [r["offered_rate"] for r in points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, style in (("p50", "o-"), ("p99", "s-"), ("p99.9", "^:")):
        ax.plot(x, [r["latency_ms"][key] for r in points], style, label=key)
    for r in points:
        notes = []
        if r["inbound_per_s"] < 0.95 * r["offered_rate"]:
            notes.append(f"achieved {r['inbound_per_s']:,.0f}/s")
        if r["lost"]:
            notes.append(f"lost {r['lost']}")
        if notes:
            ax.annotate(", ".join(notes), (r["offered_rate"], r["latency_ms"]["p99"]),
                        textcoords="offset points", xytext=(-70, -14), fontsize=8)
    ax.axhline(5, color="grey", lw=0.8, ls="--")
    ax.text(x[0], 5, " target p99 ≤ 5 ms at 2,000/s", va="bottom", fontsize=8, color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("offered load, room messages/s (× 50 members = deliveries/s)")
    ax.set_ylabel("latency, ms (send → receive)")
    wl = points[0]["workload"]
    ax.set_title(f"zchat broker, {wl} open loop: latency against load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
