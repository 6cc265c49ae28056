"""One benchmark run: a broker, load processes, a measured window, and the figures.

Timeline of a run::

    start broker -> load processes connect, create, join (each hears its rooms' publisher)
    -> go -> warm-up -> [measured window: broker CPU read at both ends] -> stop sending
    -> drain (wait for every expected delivery while they still come) -> reports -> stop all

Rates, latencies and broker CPU are taken over the measured window only; lost and
duplicated cover every message of the run.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from . import loadgen, stuck
from .brokerproc import BrokerProcess
from .ngircd import NgircdProcess
from .plan import Plan, make
from .progress import Progress
from .stats import cpu_sample, memory_kib, merge, percentiles

SETUP_STALL = 30.0  # s without one more client logged in: setup has failed
# After sending stops, the last deliveries (and catch-ups) are waited for as long as they
# keep coming: a server that fell behind still holds what it queued, and a message it
# delivers late is late (its latency says so), not lost. Lost is what has not come when
# nothing more came for DRAIN_QUIET, or by DRAIN_MAX.
DRAIN_QUIET = 3.0
DRAIN_MAX = 60.0
STUCK_RESYNC_MAX = 30.0  # s a thawed member may take to catch up


@dataclass
class Options:
    workload: str
    procs: int = 2
    duration: float = 10.0
    warmup: float = 2.0
    rate: float | None = None  # open loop, messages a second in all; None: closed loop
    clients: int = 1000  # crowd: idle clients
    stuck: int = 0
    window: int = 64
    size: int = 64
    members: int | None = None
    profile: str | None = None
    profile_out: str | None = None
    insecure: bool = False  # plaintext broker: only to measure what CURVE costs
    floor: bool = False  # bench/floor.py instead of the broker: the design's floor
    server: str = "zchat"  # "ngircd": the same load over IRC against ngIRCd (--against)
    irc_quickack: bool = False  # ngircd: receivers defeat its Nagle stall (an experiment)
    idle_sub: bool = False  # crowd: idle clients connect a SUB as well
    edges: int = 0  # K edges in front of the broker (the core), clients spread over them
    progress: bool = True
    seed: int = 1


class Failed(Exception):
    pass


class _Proc:
    """A load or stuck process and the runner's end of its pipe."""

    def __init__(self, ctx: Any, target: Any, name: str, before: tuple, after: tuple = ()):
        """Runs ``target(*before, pipe, *after)`` in a new process."""
        self.pipe, child = ctx.Pipe()
        self.name = name
        self.proc = ctx.Process(target=target, args=(*before, child, *after), name=name,
                                daemon=True)
        self.proc.start()
        child.close()

    def send(self, *msg: Any) -> None:
        self.pipe.send(msg)

    def expect(self, what: str, deadline: float, broker: BrokerProcess,
               progress: Any = None) -> Any:
        """Wait for ``what`` until the deadline; while ``progress()`` (a count) keeps
        growing, the deadline moves to SETUP_STALL seconds after the last growth."""
        last = progress() if progress is not None else None
        while True:
            if progress is not None:
                now = progress()
                if now != last:
                    last, deadline = now, max(deadline, time.monotonic() + SETUP_STALL)
            left = deadline - time.monotonic()
            if self.pipe.poll(min(max(left, 0.0), 0.5)):
                try:
                    msg = self.pipe.recv()
                except EOFError:
                    raise Failed(f"{self.name} ended") from None
                if msg[0] == "error":
                    raise Failed(msg[1])
                if msg[0] == what or (msg[0] == "ok" and msg[1] == what):
                    return msg
                continue
            if left <= 0:
                raise Failed(f"{self.name}: no '{what}' in time")
            if not self.proc.is_alive():
                raise Failed(f"{self.name} died (exit {self.proc.exitcode})")
            if not broker.alive():
                raise Failed("the broker died:\n" + "\n".join(list(broker.lines)[-20:]))

    def end(self) -> None:
        try:
            self.pipe.send(("quit",))
        except OSError:
            pass
        self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(3)


def run(opts: Options) -> dict[str, Any]:
    plan = make(opts.workload, procs=opts.procs, crowd=opts.clients, stuck=opts.stuck,
                members=opts.members)
    tmp = tempfile.mkdtemp(prefix="zchat-bench-")
    broker: Any
    if opts.server == "ngircd":
        if plan.stuck or plan.idle_workers or opts.profile or opts.floor:
            raise Failed("--against ngircd runs fanout, rooms and dm only, without --stuck, "
                         "--profile or --floor")
        broker = NgircdProcess(tmp)
    else:
        broker = BrokerProcess(tmp, profile=opts.profile, profile_out=opts.profile_out,
                               insecure=opts.insecure,
                               module="bench.floor" if opts.floor else "broker",
                               edges=opts.edges)
    procs: list[_Proc] = []
    frozen: list[_Proc] = []
    try:
        try:
            broker.start()
        except RuntimeError as exc:
            raise Failed(str(exc)) from None
        return _run(opts, plan, broker, procs, frozen)
    finally:
        for p in frozen:
            if p.proc.pid and p.proc.is_alive():
                os.kill(p.proc.pid, signal.SIGCONT)
        for p in procs + frozen:
            p.end()
        code = broker.stop()
        if code not in (0, None):
            print(f"bench: the broker exited with {code}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def _run(opts: Options, plan: Plan, broker: BrokerProcess, procs: list[_Proc],
         frozen: list[_Proc]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    groups = plan.workers + plan.idle_workers
    n_workers, n_senders = len(groups), len(plan.senders)
    sent = ctx.RawArray("q", max(1, n_senders))
    prog = ctx.RawArray("q", max(1, n_workers * n_senders))
    totals = ctx.RawArray("q", n_workers * 4)
    room_senders: dict[str, list[int]] = {}
    for s in plan.senders:
        if s.room is not None and s.sid is not None:
            room_senders.setdefault(s.room, []).append(s.sid)
    cfg = loadgen.Config(
        server=broker.router, server_key=broker.public_key(), n_workers=n_workers,
        n_senders=n_senders,
        rate_per_sender=opts.rate / n_senders if opts.rate and n_senders else None,
        window=opts.window, size=opts.size, dm_pool=plan.dm_pool,
        room_senders=room_senders, idle_sub=opts.idle_sub, seed=opts.seed,
        protocol="irc" if opts.server == "ngircd" else "zchat",
        irc_quickack=opts.irc_quickack)
    for i, specs in enumerate(groups):
        procs.append(_Proc(ctx, loadgen.main, f"load-{i}", (i, specs, cfg),
                           (sent, prog, totals)))
    setup = 30.0 + plan.clients / 200
    for phase in ("connect", "create", "join"):
        for p in procs:
            p.send(phase)
        deadline = time.monotonic() + setup
        for p in procs:
            try:
                p.expect(phase, deadline, broker,
                         lambda ph=phase: _setup_progress(ph, totals, n_workers, plan.clients,
                                                          opts))
            except Failed as exc:
                done = _setup_progress(phase, totals, n_workers, plan.clients)
                raise Failed(f"{exc} ({done}/{plan.clients} clients logged in)") from None
        if opts.progress and plan.clients >= 1000:
            print(file=sys.stderr)
    for spec in plan.stuck:
        frozen.append(_Proc(ctx, stuck.main, f"stuck-{spec.name}",
                            (spec, broker.router, cfg.server_key)))
    for p in frozen:
        p.expect("ready", time.monotonic() + 30, broker)
    setup_rss = memory_kib(broker.pid)

    # -- the run ----------------------------------------------------------------------
    now = time.monotonic()
    w0, w1 = now + opts.warmup, now + opts.warmup + opts.duration
    s0 = s1 = 0.0
    if frozen:  # frozen for the middle half of the window, thawed while load goes on
        s0, s1 = w0 + opts.duration * 0.2, w0 + opts.duration * 0.7
    ns = lambda t: int(t * 1e9)
    for p in procs:
        p.send("go", ns(w0), ns(w1), ns(s0), ns(s1))
    progress = Progress(opts.warmup + opts.duration, enabled=opts.progress,
                        label=_label(opts))
    cpu0 = cpu1 = None
    rss_max = 0
    stopped = thawed = False
    last_t, last_delivered = time.monotonic(), sum(totals[w * 4] for w in range(n_workers))
    while True:
        t = time.monotonic()
        if cpu0 is None and t >= w0:
            cpu0, t_cpu0 = cpu_sample(broker.pid), t
            load0 = _load_cpu(procs + frozen)
            edges0 = _edges_cpu(broker)
        if frozen and not stopped and t >= s0:
            for p in frozen:
                os.kill(p.proc.pid, signal.SIGSTOP)
            stopped = True
        if frozen and stopped and not thawed and t >= s1:
            for p in frozen:
                os.kill(p.proc.pid, signal.SIGCONT)
            thawed, t_thaw = True, t
        if t >= w1:
            cpu1, t_cpu1 = cpu_sample(broker.pid), t
            load1 = _load_cpu(procs + frozen)
            edges1 = _edges_cpu(broker)
            break
        rss_max = max(rss_max, memory_kib(broker.pid).get("VmRSS", 0))
        for p in procs:
            if not p.proc.is_alive():
                raise Failed(f"{p.name} died (exit {p.proc.exitcode})")
            if p.pipe.poll():
                msg = p.pipe.recv()
                if msg[0] == "error":
                    raise Failed(msg[1])
        if not broker.alive():
            raise Failed("the broker died:\n" + "\n".join(list(broker.lines)[-20:]))
        if t - last_t >= 0.5:
            delivered = sum(totals[w * 4] for w in range(n_workers))
            rate = (delivered - last_delivered) / (t - last_t)
            last_t, last_delivered = t, delivered
            progress.update(t - (w0 - opts.warmup), deliveries=rate,
                            sent=sum(sent[i] for i in range(n_senders)))
        due = [w1, t + 0.25]
        if cpu0 is None:
            due.append(w0)
        if frozen:
            due.append(s0 if not stopped else s1 if not thawed else w1)
        time.sleep(max(0.0, min(due) - time.monotonic()))
    mem = memory_kib(broker.pid)
    echo = opts.server != "ngircd"  # an IRC server sends nobody their own channel message
    for p in procs:
        p.send("stop")
    # -- drain: every sent message should reach every receiver, live or caught up ----------
    drain_start = last_news = time.monotonic()
    seen = (-1, -1)
    while time.monotonic() - last_news < DRAIN_QUIET and (
            time.monotonic() - drain_start < DRAIN_MAX):
        expected = _expected(plan, sent, echo)
        got = sum(totals[w * 4] for w in range(n_workers))
        # ...and every message answered (zchat acknowledges each; IRC nothing): an ack
        # can come after the last delivery, and one not yet in would count as unacked.
        answered = sum(totals[w * 4 + 1] + totals[w * 4 + 2] for w in range(n_workers))
        if (got, answered) != seen:
            seen, last_news = (got, answered), time.monotonic()
        if got >= expected and (not echo or answered >= sum(sent[i] for i in
                                                            range(n_senders))):
            break
        time.sleep(0.05)
    drain_s = time.monotonic() - drain_start
    progress.close()
    reports = []
    for p in procs:
        p.send("report")
    for p in procs:
        reports.append(p.expect("report", time.monotonic() + 30, broker)[1])
    stuck_reports = []
    if frozen:
        target = {str(sid): sent[sid] for sid in range(n_senders)}
        for p in frozen:
            p.send("finish", target, t_thaw, max(1.0, t_thaw + STUCK_RESYNC_MAX
                                                 - time.monotonic()))
        for p in frozen:
            stuck_reports.append(p.expect("report", time.monotonic() + STUCK_RESYNC_MAX + 10,
                                          broker)[1])
    assert cpu0 is not None and cpu1 is not None
    result = _result(opts, plan, reports, stuck_reports, cpu0, cpu1, t_cpu1 - t_cpu0, mem,
                     max(rss_max, mem.get("VmRSS", 0)), setup_rss, (s0, s1), broker)
    result["load_cores"] = round((load1 - load0) / (t_cpu1 - t_cpu0), 3)
    result["drain_s"] = round(drain_s, 2)  # how long the last deliveries took to come
    if opts.edges:  # the core is "broker" above; the edges' share, and the sum of all
        deliveries = result["deliveries_per_s"] * result["duration_s"]
        edges_cpu = edges1 - edges0
        result["edges"] = opts.edges
        result["edges_cpu_s"] = round(edges_cpu, 3)
        result["all_cpu_us_per_delivery"] = round(
            (result["broker_cpu_s"] + edges_cpu) * 1e6 / deliveries, 3) if deliveries else None
    return result


def _edges_cpu(broker: Any) -> float:
    """CPU seconds used so far by the edges in front of the core, if any."""
    return sum(cpu_sample(edge.pid).total for edge in getattr(broker, "edges", []))


def _load_cpu(procs: list[_Proc]) -> float:
    """CPU seconds used so far by the load processes (their cost shares the machine)."""
    total = 0.0
    for p in procs:
        try:
            total += cpu_sample(p.proc.pid).total if p.proc.pid else 0.0
        except OSError:
            pass
    return total


def _setup_progress(phase: str, totals: Any, n_workers: int, clients: int,
                    opts: Options | None = None) -> int:
    """How many clients have logged in (shown on one line for a large run)."""
    done = sum(totals[w * 4 + 3] for w in range(n_workers))
    if opts is not None and opts.progress and clients >= 1000:
        print(f"\r{phase}: {done}/{clients} clients logged in", end="", file=sys.stderr,
              flush=True)
    return done


def _label(opts: Options) -> str:
    who = " ngIRCd" if opts.server == "ngircd" else " floor" if opts.floor else ""
    return f"{opts.workload}{who} " + (f"{opts.rate:g}/s" if opts.rate else "closed")


def _expected(plan: Plan, sent: Any, echo: bool = True) -> int:
    total = 0
    for s in plan.senders:
        assert s.sid is not None
        total += sent[s.sid] * (len(plan.receivers_of(s.sid, echo)) if s.room else 1)
    return total


def _result(opts: Options, plan: Plan, reports: list[dict[str, Any]],
            stuck_reports: list[dict[str, Any]], cpu0: Any, cpu1: Any, window: float,
            mem: dict[str, int], rss_max: int, setup_rss: dict[str, int],
            stuck_window: tuple[float, float], broker: BrokerProcess) -> dict[str, Any]:
    sent: dict[str, int] = {}
    refused: dict[str, int] = {}
    received: dict[str, dict[str, int]] = {}
    for r in reports:
        sent.update(r["sent"])
        for k, v in r["refused"].items():
            refused[k] = refused.get(k, 0) + v
        received.update(r["received"])
    lost = 0
    echo = opts.server != "ngircd"
    for stream, n in sent.items():
        ok = n - refused.get(stream, 0)
        if ">" in stream:  # a private stream: sender>recipient
            sid, target = stream.split(">")
            lost += ok - received.get(target, {}).get(sid, 0)
        else:
            for name in plan.receivers_of(int(stream), echo):
                lost += ok - received.get(name, {}).get(stream, 0)
    total = lambda key: sum(r[key] for r in reports)
    hist = merge(r["hist"] for r in reports)
    lag = merge(r["lag"] for r in reports)
    p50, p99, p999, pmax = percentiles(hist, (50, 99, 99.9, 100))
    lag99 = percentiles(lag, (99,))[0]
    deliveries, inbound = total("win_deliveries"), total("win_inbound")
    cpu = cpu1.total - cpu0.total
    threads = {k: cpu1.threads.get(k, 0.0) - cpu0.threads.get(k, 0.0)
               for k in cpu1.threads}
    io = sum(v for k, v in threads.items() if k.startswith("ZMQbg/IO"))
    main = threads.get("python", 0.0)
    ngircd = opts.server == "ngircd"
    if ngircd:  # one process, one thread
        threads = {"ngircd": cpu}
    us = lambda seconds, n: round(seconds * 1e6 / n, 3) if n else None
    ms = lambda v: round(v / 1000, 3) if v is not None else None
    codes: dict[str, int] = {}
    for r in reports:
        for k, v in r["error_codes"].items():
            codes[k] = codes.get(k, 0) + v
    settings = ("FLOOR RELAY (--floor experiment: no checks, no store); "
                if opts.floor else "") \
        + ("PLAINTEXT (--insecure experiment)" if opts.insecure else "CURVE on") \
        + ("" if opts.floor else "; SQLite persistence on (WAL, synchronous=NORMAL); "
                                 "per-client rate limit off (--rate 0)")
    if ngircd:
        settings = (f"ngIRCd {getattr(broker, 'version', '')}: plain IRC over loopback TCP "
                    "(no TLS, no store); MaxPenaltyTime 0 (no flood penalties), senders "
                    "IRC operators with user mode +F; no DNS, ident or PAM"
                    + ("; receivers TCP_QUICKACK (--irc-quickack experiment)"
                       if opts.irc_quickack else ""))
    result: dict[str, Any] = {
        "workload": opts.workload,
        "server": "ngircd" if ngircd else "floor" if opts.floor else "zchat",
        "mode": f"open {opts.rate:g}/s" if opts.rate else "closed",
        "offered_rate": opts.rate,
        "procs": opts.procs, "load_processes": len(reports),
        "clients": plan.clients, "senders": len(plan.senders),
        "duration_s": round(window, 3),
        "inbound_per_s": round(inbound / window, 1),
        "deliveries_per_s": round(deliveries / window, 1),
        "latency_ms": {"p50": ms(p50), "p99": ms(p99), "p99.9": ms(p999), "max": ms(pmax)},
        "latency_samples": sum(hist.values()),
        "sender_lag_p99_ms": ms(lag99),
        "lost": lost, "duplicated": total("duplicated"), "caught_up": total("caught_up"),
        "reordered": total("reordered"), "delivered": total("delivered"),
        "sent": sum(sent.values()), "errors": total("errors"), "error_codes": codes,
        "expired_sessions": total("expired"), "unacked_at_end": total("unacked"),
        "skipped_sends": total("skipped"), "send_blocked": total("send_blocked"),
        "hello_retries": total("hello_retries"),
        "broker_cpu_s": round(cpu, 3), "broker_cores": round(cpu / window, 3),
        "broker_cpu_us_per_delivery": us(cpu, deliveries),
        "broker_cpu_us_per_inbound": us(cpu, inbound),
        "broker_cpu_split_us_per_inbound": None if ngircd else {
            "python": us(main, inbound), "zmq_io": us(io, inbound)},
        "broker_threads_cpu_s": {k: round(v, 3) for k, v in threads.items()},
        "broker_rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
        "broker_rss_max_mib": round(max(rss_max, mem.get("VmHWM", 0)) / 1024, 1),
        "broker_rss_after_setup_mib": round(setup_rss.get("VmRSS", 0) / 1024, 1),
        "settings": settings,
        "curve": not opts.insecure and not ngircd,
        "irc_quickack": opts.irc_quickack if ngircd else None,
        "floor": opts.floor,
        "profile": opts.profile,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": _loadavg(),
    }
    if ngircd:
        result["server_version"] = getattr(broker, "version", "")
    if opts.workload == "crowd":
        result["idle_clients"] = opts.clients
        result["idle_clients_connections"] = "DEALER+SUB" if opts.idle_sub else "DEALER"
    if stuck_reports:
        s0, s1 = stuck_window
        during = merge(r["stuck_hist"] for r in reports)
        q50, q99 = percentiles(during, (50, 99))
        removed = [t / 1e9 - s0 for r in reports for (_room, name, t) in r["leaves"]
                   if name.startswith("stuck") and s0 * 1e9 <= t]
        result["stuck"] = {
            "members": len(stuck_reports), "frozen_s": round(s1 - s0, 3),
            "others_deliveries_per_s_while_frozen":
                round(total("stuck_deliveries") / (s1 - s0), 1),
            "others_latency_ms_while_frozen": {"p50": ms(q50), "p99": ms(q99)},
            "removed_by_broker_after_s": round(max(removed), 3) if removed else None,
            "thawed": stuck_reports,
        }
    if result["lost"] or result["duplicated"]:
        tail = [line for line in broker.lines if "ERROR" in line or "Traceback" in line]
        if tail:
            result["broker_errors"] = tail[-5:]
    return result


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""
