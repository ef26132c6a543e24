"""`framesync replay {info,verify,desync,export,timeline} LOG`: arguments and output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from battle.inputlog import InputLogError, LogContents, read_log_file


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="replay", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="header, roster, duration and events of a log")
    verify = sub.add_parser(
        "verify", help="re-run the reference game and check every recorded hash (exit 1 if not)"
    )
    desync = sub.add_parser(
        "desync", help="first divergent frame, each side, and a field diff from state dumps"
    )
    desync.add_argument("--dumps", type=Path, help="state dumps written by the clients (bots)")
    export = sub.add_parser("export", help="frames as JSON lines")
    export.add_argument("--out", type=Path, help="file to write (default: standard output)")
    timeline = sub.add_parser("timeline", help="a PNG of latency, connections and desyncs")
    timeline.add_argument("--out", type=Path, help="PNG path (default: LOG with .png)")
    timeline.add_argument("--traces", type=Path, help="latency traces written by the bots")
    for p in (info, verify, desync, export, timeline):
        p.add_argument("log", type=Path, help="an input log (.fslog)")
    for p in (info, verify, desync):
        p.add_argument("--json", action="store_true")


def run_replay(args: argparse.Namespace) -> int:
    try:
        log = read_log_file(args.log)
    except (OSError, InputLogError) as exc:
        print(f"framesync replay: {args.log}: {exc}", file=sys.stderr)
        return 2
    if log.truncated:
        print(f"note: {args.log} ends inside a record (a crash?); using the intact part",
              file=sys.stderr)  # fmt: skip
    action = {
        "info": _info,
        "verify": _verify,
        "desync": _desync,
        "export": _export,
        "timeline": _timeline,
    }[args.replay]
    return action(args, log)


def _info(args: argparse.Namespace, log: LogContents) -> int:
    from sim.replay import info  # noqa: PLC0415

    data = info(log)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"match {data['match_id']} room {data['room_id']} seed {data['seed']} "
          f"({data['server_version']})")  # fmt: skip
    print(f"  {data['frames']} frames at {data['tick_rate']} Hz = "
          f"{data['duration_seconds']:.1f} s; {data['checksums']} hash records")  # fmt: skip
    for e in data["roster"]:
        print(f"  slot {e['slot']}: player {e['player_id']} team {e['team']}, "
              f"{e['inputs']} inputs")  # fmt: skip
    for ev in data["events"]:
        print(f"  frame {ev['frame']}: slot {ev['slot']} {ev['kind']} {ev['detail']}".rstrip())
    for d in data["desyncs"]:
        print(f"  DESYNC at frame {d['frame']}: minority slots {d['minority']}")
    if data["result"]:
        print(f"  result at frame {data['result']['frame']}: {data['result']['result']}")
    if data["end"]:
        print(f"  ended at frame {data['end']['frame']}: {data['end']['reason']}")
    return 0


def _verify(args: argparse.Namespace, log: LogContents) -> int:
    from sim.replay import verify  # noqa: PLC0415

    report = verify(log)
    if args.json:
        print(json.dumps({"ok": report.ok, "frames": report.frames, "checked": report.checked,
                          "mismatches": report.mismatches}, indent=2))  # fmt: skip
    elif report.ok:
        print(f"OK: {report.frames} frames re-run, {report.checked} recorded hashes match")
    elif not report.checked:
        print(f"NOTHING TO CHECK: {report.frames} frames re-run, but the log has no agreed hashes")
    else:
        frame, _, recorded, got = report.mismatches[0]
        print(f"MISMATCH: {len(report.mismatches)} recorded hash(es) differ from the re-run; "
              f"first at frame {frame}: recorded {recorded:#018x}, re-run {got:#018x}")  # fmt: skip
    return 0 if report.ok else 1


def _desync(args: argparse.Namespace, log: LogContents) -> int:
    from sim.replay import desync  # noqa: PLC0415

    reports = desync(log, args.dumps)
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
        return 0 if reports else 1
    if not reports:
        print("no desync recorded in this log")
        return 1
    for r in reports:
        print(f"desync at frame {r.frame}: slots {r.minority_slots} diverged from "
              f"{r.majority_slots} (majority hash {r.majority_hash:#018x})")  # fmt: skip
        print(f"  the reference game agrees with the {r.reference_side}")
        for slot, diffs in sorted(r.diffs.items()):
            print(f"  slot {slot}: {len(diffs)} field(s) differ from the reference")
            for d in diffs[:20]:
                print(f"    {d.path}: reference {d.a!r}, slot {slot} {d.b!r}")
        for slot in r.missing_dumps:
            print(f"  slot {slot}: no state dump for frame {r.frame}")
    return 0


def _export(args: argparse.Namespace, log: LogContents) -> int:
    from sim.replay import export_lines  # noqa: PLC0415

    text = "\n".join(export_lines(log)) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _timeline(args: argparse.Namespace, log: LogContents) -> int:
    from sim.timeline import draw_timeline  # noqa: PLC0415

    out = args.out or args.log.with_suffix(".png")
    try:
        shown = draw_timeline(log, out, args.traces)
    except RuntimeError as exc:
        print(f"framesync replay timeline: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({shown} per player, connection events, desyncs)")
    return 0
