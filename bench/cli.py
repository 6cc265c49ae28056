"""``python -m bench``: run a workload (or the whole suite) and write the results."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import ngircd, report
from .brokerproc import ROOT
from .plan import WORKLOADS
from .runner import Failed, Options, run

SWEEP_RATES = "500,1000,2000,4000"
AGAINST_DM_RATE = 20_000.0  # 'all --against ngircd': private messages open loop
CROWD_ROOM_RATE = 200.0  # the crowd's busy room (x 50 members), unless --rate says otherwise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark a real zchat broker (CURVE and persistence on) with load "
                    "from several client processes.",
        epilog="Workloads: fanout (1 room x 50 members, 1 sender), rooms (10 rooms x 20 "
               "members, 2 senders each), dm (100 clients messaging random others), crowd "
               "(--clients idle clients pinging every second, plus a busy fanout room). "
               "'all' runs the suite behind docs/bench/results.md.")
    p.add_argument("workload", choices=(*WORKLOADS, "all", "report"),
                   help="a workload, 'all' (the suite), or 'report': rewrite results.md and "
                        "the plot from the JSON lines of earlier runs (--json)")
    p.add_argument("--procs", type=int, default=2, help="load processes (default %(default)s)")
    p.add_argument("--duration", type=float, default=None,
                   help="measured seconds (default 10; 30 for 'all')")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of load before measuring (default %(default)s)")
    p.add_argument("--rate", type=float, default=None,
                   help="open loop: room/private messages a second in all (default: closed "
                        f"loop; crowd's busy room {CROWD_ROOM_RATE:g})")
    p.add_argument("--clients", type=int, default=None,
                   help="crowd: idle connected clients (default 1000; 10000 for 'all')")
    p.add_argument("--idle-sub", action="store_true",
                   help="crowd: idle clients connect a SUB too, as the real client does even "
                        "in no room (two connections each: mind the file descriptor limit)")
    p.add_argument("--stuck", type=int, default=0, metavar="K",
                   help="freeze K extra members of the first room with SIGSTOP for half the "
                        "window, then let them catch up (issue 3)")
    p.add_argument("--window", type=int, default=64,
                   help="closed loop: messages a sender may have in flight, end to end "
                        "(default %(default)s)")
    p.add_argument("--size", type=int, default=64,
                   help="characters of each message's text (default %(default)s)")
    p.add_argument("--members", type=int, default=None, help="override the room size")
    p.add_argument("--plot", action="store_true",
                   help="also run the workload open loop at --rates and plot latency "
                        "against load (PNG)")
    p.add_argument("--rates", default=SWEEP_RATES,
                   help="offered loads for --plot (default %(default)s)")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench"),
                   help="where results.md and latency.png go (default docs/bench)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="append results as JSON lines here (default OUT/results.jsonl)")
    p.add_argument("--profile", choices=("cprofile", "pyinstrument"),
                   help="run the broker under a profiler (slower: not for the figures)")
    p.add_argument("--profile-out", metavar="FILE",
                   help="profile file (default OUT/broker-WORKLOAD.prof or .txt)")
    p.add_argument("--insecure", action="store_true",
                   help="experiment: a plaintext broker, to see what encryption costs "
                        "(never the published figures)")
    p.add_argument("--floor", action="store_true",
                   help="experiment: run the workload against bench/floor.py, a relay with "
                        "none of the broker's checks or storage, to show the design's floor")
    p.add_argument("--against", choices=("ngircd",),
                   help="run the same load against ngIRCd too (plain IRC; the Debian package "
                        "'ngircd' must be installed), taking turns with zchat and the floor "
                        "relay in one session, and write the ratios to OUT/"
                        f"{report.AGAINST_MD}; with 'all': fanout, rooms, dm and dm open "
                        f"loop {AGAINST_DM_RATE:,.0f}/s")
    p.add_argument("--pairs", type=int, default=2,
                   help="--against: rounds of zchat, floor relay, ngIRCd per workload "
                        "(default %(default)s)")
    p.add_argument("--no-floor", action="store_true",
                   help="--against: leave the floor relay out of the rounds")
    p.add_argument("--irc-quickack", action="store_true",
                   help="--against, experiment: IRC receivers ACK every read at once "
                        "(TCP_QUICKACK), so ngIRCd's writes (no TCP_NODELAY) do not wait "
                        "for delayed ACKs")
    p.add_argument("--edges", type=int, default=0, metavar="K",
                   help="K edges (python -m edge) in front of the broker, the clients spread "
                        "over them; broker_* figures are then the core's, and "
                        "all_cpu_us_per_delivery counts the edges too (default 0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.workload == "report":
        if args.against:
            return rewrite_against(Path(args.json or out / report.AGAINST_JSON), out)
        return rewrite_report(Path(args.json or out / "results.jsonl"), out)
    if args.against:
        problem = against_problem(args)
        if problem:
            print(f"bench: {problem}", file=sys.stderr)
            return 2
    base = Options(args.workload if args.workload != "all" else "fanout",
                   procs=args.procs, duration=args.duration or 10.0, warmup=args.warmup,
                   rate=args.rate, clients=args.clients or 1000, stuck=args.stuck,
                   window=args.window, size=args.size, members=args.members,
                   profile=args.profile, progress=not args.quiet, insecure=args.insecure,
                   floor=args.floor, idle_sub=args.idle_sub, edges=args.edges)
    if args.profile:
        ext = "prof" if args.profile == "cprofile" else "txt"
        target = Path(args.profile_out or out / f"broker-{base.workload}.{ext}").resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        base.profile_out = str(target)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if args.against:
        base.irc_quickack = args.irc_quickack
        plan = against(base, args.workload == "all", args.pairs, not args.no_floor)
    elif args.workload == "all":
        base.duration = args.duration or 30.0
        plan = suite(base, rates, args.clients or 10_000)
    else:
        if args.workload == "crowd" and base.rate is None:
            base.rate = CROWD_ROOM_RATE
        plan = [base] + ([replace(base, rate=r, stuck=0) for r in rates] if args.plot else [])
    results: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        for i, opts in enumerate(plan):
            print(f"bench [{i + 1}/{len(plan)}] {_describe(opts)}", file=sys.stderr)
            try:
                result = run(opts)
            except Failed as exc:  # say so, keep it on record, go on with the others
                print(f"bench: {_describe(opts)} failed: {exc}", file=sys.stderr)
                failed.append({"workload": opts.workload, "run": _describe(opts),
                               "failed": str(exc), "command": command})
                continue
            result["command"] = command
            result["commit"] = report.commit()
            results.append(result)
            print(report.table([result]).splitlines()[-1], file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        if not results:
            return 130
    if args.against:
        report.append_json(args.json or out / report.AGAINST_JSON, results + failed)
        return write_against(results, failed, command, out)
    report.append_json(args.json or out / "results.jsonl", results + failed)
    plot_name = None
    if args.plot or args.workload == "all":
        # open-loop runs of the plotted workload, one per offered load
        sweep = {r["offered_rate"]: r for r in results
                 if r["workload"] == base.workload and r["offered_rate"] and not r.get("stuck")}
        if report.plot(list(sweep.values()), out / "latency.png"):
            plot_name = "latency.png"
        else:
            print("bench: no plot (matplotlib is not installed: pip install '.[bench]')",
                  file=sys.stderr)
    text = report.markdown(results, command, plot_name, failed)
    (out / "results.md").write_text(text + "\n")
    print(text)
    return 1 if failed else 0


def rewrite_report(source: Path, out: Path) -> int:
    """results.md and latency.png again, from every run in a JSON lines file."""
    runs = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    if not runs:
        print(f"bench: no results in {source}", file=sys.stderr)
        return 1
    command = "; ".join(dict.fromkeys(r.get("command", "?") for r in runs))
    results = [r for r in runs if "failed" not in r]
    failed = [r for r in runs if "failed" in r]
    plot_name = None
    sweep = {r["offered_rate"]: r for r in results if r["workload"] == "fanout"
             and r.get("offered_rate") and not r.get("stuck")}
    if len(sweep) > 1 and report.plot(list(sweep.values()), out / "latency.png"):
        plot_name = "latency.png"
    text = report.markdown(results, command, plot_name, failed)
    (out / "results.md").write_text(text + "\n")
    print(text)
    return 0


def against_problem(args: argparse.Namespace) -> str | None:
    """Why an --against run cannot be made, or None."""
    if ngircd.binary() is None:
        return ("--against ngircd: the ngircd binary is not installed (Debian/Ubuntu: "
                "apt-get install ngircd); nothing was run")
    if args.workload == "crowd" or args.stuck or args.profile or args.floor or args.plot:
        return ("--against ngircd runs fanout, rooms and dm (or 'all' of them), without "
                "--stuck, --profile, --floor or --plot")
    if args.insecure:
        return "--against ngircd compares with the broker as in production: no --insecure"
    if args.pairs < 1:
        return "--pairs must be at least 1"
    return None


def against(base: Options, everything: bool, pairs: int, floor: bool) -> list[Options]:
    """Rounds of zchat, floor relay, ngIRCd for each workload: A B A B, in one session."""
    closed = replace(base, stuck=0)
    if everything:
        closed.rate = None
        shapes = [replace(closed, workload=w) for w in ("fanout", "rooms", "dm")]
        shapes.append(replace(closed, workload="dm", rate=AGAINST_DM_RATE))
    else:
        shapes = [closed]
    runs = []
    for shape in shapes:
        for _ in range(pairs):
            runs.append(replace(shape, server="zchat"))
            if floor:
                runs.append(replace(shape, floor=True))
            runs.append(replace(shape, server="ngircd"))
    return runs


def write_against(results: list[dict[str, Any]], failed: list[dict[str, Any]],
                  command: str, out: Path) -> int:
    plot_name = report.AGAINST_PNG if report.plot_against(results, out / report.AGAINST_PNG) \
        else None
    text = report.against_markdown(results, command, plot_name, failed)
    (out / report.AGAINST_MD).write_text(text + "\n")
    print(text)
    return 1 if failed else 0


def rewrite_against(source: Path, out: Path) -> int:
    """against-ngircd.md and its plot again, from the JSON lines of --against runs."""
    runs = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    if not runs:
        print(f"bench: no results in {source}", file=sys.stderr)
        return 1
    command = "; ".join(dict.fromkeys(r.get("command", "?") for r in runs))
    write_against([r for r in runs if "failed" not in r], [r for r in runs if "failed" in r],
                  command, out)
    return 0


def suite(base: Options, rates: list[float], crowd: int) -> list[Options]:
    """The runs behind docs/bench/results.md."""
    closed = replace(base, rate=None, stuck=0)
    runs = [
        replace(closed, workload="fanout"),
        replace(closed, workload="rooms"),
        replace(closed, workload="dm"),
        replace(closed, workload="fanout", rate=2000.0),
        replace(closed, workload="crowd", rate=CROWD_ROOM_RATE, clients=crowd),
        replace(closed, workload="fanout", rate=2000.0, stuck=1),
    ]
    runs += [replace(closed, workload="fanout", rate=r) for r in rates if r != 2000]
    # The same closed loops against the bare relay: the floor under the CPU targets.
    runs += [replace(closed, workload=w, floor=True) for w in ("fanout", "rooms", "dm")]
    return runs


def _describe(opts: Options) -> str:
    mode = f"open loop {opts.rate:g} msg/s" if opts.rate else "closed loop"
    mode += " against ngIRCd" if opts.server == "ngircd" else " (floor relay)" \
        if opts.floor else ""
    extra = f", {opts.clients} idle clients" if opts.workload == "crowd" else ""
    extra += f", {opts.stuck} stuck" if opts.stuck else ""
    return f"{opts.workload} {mode}{extra}, {opts.procs} load processes, {opts.duration:g} s"
