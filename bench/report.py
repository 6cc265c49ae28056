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
     + (" (ngIRCd)" if r.get("server") == "ngircd"
        else "" if r.get("curve", True) else " (no CURVE)")
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
    if (Path(ROOT) / "docs" / "bench" / AGAINST_MD).exists():
        parts += ["The same workloads against ngIRCd, a C IRC server, with the ratios: "
                  f"[{AGAINST_MD}]({AGAINST_MD}).", ""]
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


# --- against ngIRCd (--against ngircd) -------------------------------------------------------

AGAINST_MD, AGAINST_PNG, AGAINST_JSON = "against-ngircd.md", "against-ngircd.png", \
    "against-ngircd.jsonl"
SERVERS = (("zchat", "zchat"), ("floor", "floor relay"), ("ngircd", "ngIRCd"))


def _server(r: dict[str, Any]) -> str:
    return r.get("server") or ("floor" if r.get("floor") else "zchat")


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _groups(results: list[dict[str, Any]]) -> list[tuple[tuple, dict[str, list]]]:
    """Runs by (workload, mode, clients), then by server, in the order first met."""
    out: dict[tuple, dict[str, list]] = {}
    for r in results:
        if r.get("stuck") or r.get("profile") or not r.get("curve", True) and \
                _server(r) != "ngircd":
            continue
        key = (r["workload"], r["mode"], r["clients"])
        out.setdefault(key, {}).setdefault(_server(r), []).append(r)
    return [(k, v) for k, v in out.items() if "zchat" in v and "ngircd" in v]


METRICS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("server CPU per delivery", lambda r: r["broker_cpu_us_per_delivery"]),
    ("deliveries/s", lambda r: r["deliveries_per_s"]),
    ("p50", lambda r: r["latency_ms"]["p50"]),
    ("p99", lambda r: r["latency_ms"]["p99"]),
]


def ratio(runs: dict[str, list], get: Callable[[dict[str, Any]], Any],
          over: str = "zchat", base: Callable[[dict[str, Any]], Any] | None = None
          ) -> tuple[float | None, list[float]]:
    """median(``over``) / median(ngIRCd), and the ratio of each pair (k-th run of each);
    ngIRCd's figure read by ``base`` if given, else by ``get``."""
    base = base or get
    a = _median([get(r) for r in runs.get(over, ())])
    b = _median([base(r) for r in runs["ngircd"]])
    pairs = [get(x) / base(y) for x, y in zip(runs.get(over, ()), runs["ngircd"],
                                              strict=False)
             if get(x) is not None and base(y)]
    return (a / b if a is not None and b else None), pairs


def _x(value: tuple[float | None, list[float]]) -> str:
    r, pairs = value
    if r is None:
        return "–"
    f = lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
    text = f"{f(r)}×"
    if len(pairs) > 1:
        text += f" ({f(min(pairs))}–{f(max(pairs))})"
    return text


def _num(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}".rstrip("0").rstrip(".") if v < 100 else f"{v:.0f}"


def ratio_table(results: list[dict[str, Any]]) -> str:
    rows = ["| workload | mode | runs zchat / ngIRCd | CPU per delivery, zchat ÷ ngIRCd | "
            "floor relay ÷ ngIRCd | deliveries/s, zchat ÷ ngIRCd | p50, zchat ÷ ngIRCd | "
            "p99, zchat ÷ ngIRCd |",
            "|---|---|---|---|---|---|---|---|"]
    for (wl, mode, _clients), runs in _groups(results):
        cpu = METRICS[0][1]
        floor = _x(ratio(runs, cpu, "floor")) if "floor" in runs else "–"
        rows.append(f"| {wl} | {mode} | {len(runs['zchat'])} / {len(runs['ngircd'])} | "
                    f"{_x(ratio(runs, cpu))} | {floor} | "
                    + " | ".join(_x(ratio(runs, get)) for _, get in METRICS[1:]) + " |")
    return "\n".join(rows)


# Issue 13's targets: CPU per delivery at most this many times ngIRCd's, closed loop; in
# the open loop, p99 at most twice ngIRCd's.
NGIRCD_TARGETS = {"fanout": 1.0, "rooms": 1.0, "dm": 2.0}
OPEN_P99_TARGET = 2.0


def io_per_delivery(r: dict[str, Any]) -> float | None:
    """libzmq's I/O thread (CURVE, framing, the TCP sends) per delivery: what the server
    pays before any of its Python runs."""
    split = r.get("broker_cpu_split_us_per_inbound") or {}
    io, deliveries = split.get("zmq_io"), r.get("deliveries_per_s")
    if io is None or not deliveries:
        return None
    return io * r["inbound_per_s"] / deliveries


def floor_table(results: list[dict[str, Any]]) -> str:
    """Whether a target can be reached at all: what the transport alone costs (the I/O
    thread, in zchat and in the floor relay that does no chat work), and what the relay
    costs in all, each over ngIRCd's whole cost, beside the target."""
    rows = ["| workload | mode | target | zchat's I/O thread alone ÷ ngIRCd | floor relay's "
            "I/O thread alone ÷ ngIRCd | floor relay in all ÷ ngIRCd | within reach? |",
            "|---|---|---|---|---|---|---|"]
    cpu, p99 = METRICS[0][1], METRICS[3][1]
    for (wl, mode, _clients), runs in _groups(results):
        closed = mode == "closed"
        if closed and wl not in NGIRCD_TARGETS:
            continue
        target = NGIRCD_TARGETS[wl] if closed else OPEN_P99_TARGET
        zio = ratio(runs, io_per_delivery, base=cpu) if closed else (None, [])
        fio = ratio(runs, io_per_delivery, "floor", cpu) if closed and "floor" in runs \
            else (None, [])
        relay = ratio(runs, cpu if closed else p99, "floor") if "floor" in runs \
            else (None, [])
        # Out of reach if the relay's transport alone already costs more than the target
        # allows; out of reach of Python if the relay in all does (it does no chat work:
        # decoding and forwarding in Python leave nothing for the rest).
        verdict = "–"
        if closed and fio[0] is not None and fio[0] > target:
            verdict = "no: the transport alone is above it"
        elif relay[0] is not None and relay[0] > target:
            verdict = ("no, not in Python: the relay, which only decodes and forwards, "
                       "is above it")
        elif relay[0] is not None:
            verdict = "not ruled out by the floor"
        rows.append(f"| {wl} | {mode} | {'CPU' if closed else 'p99'} ≤ {target:g}× | "
                    f"{_x(zio)} | {_x(fio)} | {_x(relay)}{'' if closed else ' (p99)'} | "
                    f"{verdict} |")
    return "\n".join(rows)


def median_table(results: list[dict[str, Any]]) -> str:
    rows = ["| workload | mode | server | runs | µs CPU per delivery | µs CPU per inbound | "
            "deliveries/s | p50 ms | p99 ms | server cores | RSS MiB | lost / dup (all runs) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (wl, mode, _clients), runs in _groups(results):
        for server, label in SERVERS:
            rs = runs.get(server)
            if not rs:
                continue
            med = lambda get, rs=rs: _median([get(r) for r in rs])
            rows.append(
                f"| {wl} | {mode} | {label} | {len(rs)} | "
                f"{_num(med(lambda r: r['broker_cpu_us_per_delivery']), 3)} | "
                f"{_num(med(lambda r: r['broker_cpu_us_per_inbound']), 3)} | "
                f"{_num(med(lambda r: r['deliveries_per_s']))} | "
                f"{_num(med(lambda r: r['latency_ms']['p50']))} | "
                f"{_num(med(lambda r: r['latency_ms']['p99']))} | "
                f"{_num(med(lambda r: r['broker_cores']), 3)} | "
                f"{_num(med(lambda r: r['broker_rss_max_mib']), 1)} | "
                f"{sum(r['lost'] for r in rs)} / {sum(r['duplicated'] for r in rs)} |")
    return "\n".join(rows)


def against_markdown(results: list[dict[str, Any]], command: str,
                     plot_name: str | None = None,
                     failed: list[dict[str, Any]] = ()) -> str:
    ng = next((r for r in results if _server(r) == "ngircd"), {})
    parts = [
        "# zchat against ngIRCd", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; server and load share it. Commit "
        f"{(results[0].get('commit') if results else None) or commit() or '?'}; "
        f"ngIRCd {ng.get('server_version') or '?'} (the Debian package).  ",
        "The same plans, load processes and figures as [results.md](results.md), in one "
        "session, the servers taking turns (zchat, floor relay, ngIRCd, zchat, ...), so a "
        "change in the machine's load falls on all of them. The load speaks the zchat "
        "protocol to zchat and the floor relay, plain IRC to ngIRCd (`NICK`/`USER`, `JOIN "
        "#room`, `PRIVMSG #room` or `PRIVMSG nick`: bench/ircload.py); latency, lost and "
        "duplicated come from the same timestamp and sequence number in the text.  ",
        "zchat runs as in production (CURVE, SQLite persistence, every check; `--rate 0`). "
        "ngIRCd runs with a config of the benchmark's on 127.0.0.1: plain TCP, no store, "
        "no DNS/ident/PAM, flood control off as far as it allows (`MaxPenaltyTime 0`, "
        "senders are operators with user mode +F); see bench/ngircd.py. Server CPU is "
        "utime+stime of the server process from /proc over the measured window, divided "
        "by the deliveries of that window, for both.  ",
        "Ratios are zchat's median over ngIRCd's median (above 1: zchat costs more, or "
        "for deliveries/s, carries more); in brackets the lowest and highest ratio of one "
        "zchat run to the ngIRCd run next to it. An IRC server does not echo a channel "
        "message to its sender, so a room message has one delivery fewer under ngIRCd "
        "(49 in fanout's room of 50, 19 in rooms'); costs are per delivery made.",
        "", "## Ratios", "", ratio_table(results), "", _load_note(results), "",
        "## The floor: can a target be reached at all?", "",
        "The I/O thread is libzmq's (CURVE, ZMTP framing, the TCP sends: `/proc` per "
        "thread), the same in zchat and in the floor relay, and paid before any Python "
        "runs. Where the relay's transport alone costs more per delivery than the target "
        "allows zchat in all, no chat logic of any speed reaches it with this design "
        "(ZeroMQ, CURVE per connection, loopback on these two cores). Open loop: the "
        "relay's p99 over ngIRCd's.", "", floor_table(results), "",
        "## Medians", "", median_table(results), "",
    ]
    if plot_name:
        parts += [f"![zchat, floor relay and ngIRCd]({plot_name})", ""]
    parts += ["## Every run", "", table(results), ""]
    if failed:
        parts += ["## Runs that failed", "",
                  *[f"- {f['run']}: {f['failed']}" for f in failed], ""]
    return "\n".join(parts)


def _load_note(results: list[dict[str, Any]]) -> str:
    loads = []
    for r in results:
        try:
            loads.append(float(str(r.get("loadavg", "")).split()[0]))
        except (ValueError, IndexError):
            pass
    if not loads:
        return ""
    return (f"1-minute load average at the end of each run: {min(loads):.2f} to "
            f"{max(loads):.2f} on {os.cpu_count()} cores. Above the core count, other "
            "work shared the cores: taking turns spreads it over all three servers, but "
            "every figure is lower than on a quiet machine, and as batching changes with "
            "load, so may the ratios.")


def plot_against(results: list[dict[str, Any]], path: str | Path) -> bool:
    """Server CPU per delivery and p50/p99 latency, per workload and server (medians)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = _groups(results)
    if not groups:
        return False
    labels = [f"{wl}\n{mode}" for (wl, mode, _c), _ in groups]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    servers = [(s, lab) for s, lab in SERVERS if any(s in runs for _, runs in groups)]
    width = 0.8 / len(servers)
    for i, (server, label) in enumerate(servers):
        xs = [k + (i - (len(servers) - 1) / 2) * width for k in range(len(groups))]
        cpu = [_median([r["broker_cpu_us_per_delivery"] for r in runs.get(server, ())])
               or 0 for _, runs in groups]
        ax1.bar(xs, cpu, width, label=label)
        for x, v in zip(xs, cpu, strict=True):
            if v:
                ax1.text(x, v, f"{v:.2g}", ha="center", va="bottom", fontsize=7)
        for key, marker in (("p50", "o"), ("p99", "^")):
            lat = [_median([r["latency_ms"][key] for r in runs.get(server, ())])
                   for _, runs in groups]
            ax2.scatter(xs, [v if v else float("nan") for v in lat], marker=marker,
                        color=f"C{i}", label=f"{label} {key}")
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(groups)), labels, fontsize=8)
        ax.set_yscale("log")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    ax1.set_ylabel("server CPU, µs per delivery (median)")
    ax1.set_title("server CPU per delivery")
    ax1.legend(fontsize=8)
    ax2.set_ylabel("latency, ms (send → receive, median of runs)")
    ax2.set_title("latency p50 (●) and p99 (▲)")
    ax2.legend(fontsize=7, ncol=len(servers))
    fig.suptitle("zchat broker, floor relay and ngIRCd: the same load, one session")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
