"""ipsecctl: look at a running ipsecd (the ipsecmon of this lab) and administer it.

    ipsecctl status | sa | filters | stats [--json]
    ipsecctl keys --wireshark [-o FILE]     the esp_sa decryption table (Wireshark/tshark)
    ipsecctl keys --tshark                  the same as tshark -o options, one per line
    ipsecctl reload                         re-read the configuration file

Exit code 0 on success, 1 when ipsecd refuses or cannot be reached (the reason on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ipsecd import config
from ipsecd.control import ControlError, request


def table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [headers, *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    return "\n".join(lines)


def show_status(result: dict) -> str:
    c = result["counters"]
    return "\n".join([
        f"ipsecd pid {result['pid']}, up {result['uptime_seconds']} s, configuration {result['config']}",
        f"filters: {result['filters']}   active SAs: {result['active_sas']}   "
        f"waiting for IKE: {result['pending_acquires']}   TUN: {result['tun']}",
        "confidential bytes sent/received: "
        f"{c['confidential_bytes_sent']}/{c['confidential_bytes_received']}",
        f"bad SPI: {c['bad_spi_packets']}   not decrypted: {c['packets_not_decrypted']}   "
        f"not authenticated: {c['packets_not_authenticated']}   replayed: {c['replayed_packets']}   "
        f"dropped by policy: {c['dropped_by_policy']}",
    ])


def show_sas(result: list[dict]) -> str:
    if not result:
        return "no security associations"
    rows = [[s["spi"], s["protocol"].upper(), s["direction"], s["mode"],
             f"{s['source']} -> {s['destination']}",
             "/".join(a for a in (s["encryption"], s["integrity"]) if a),
             "udp " + "->".join(map(str, s["udp_encap"])) if s["udp_encap"] else "",
             s["filter"], s["counters"]["packets"], s["counters"]["bytes"], s["sequence"], s["age_seconds"]]
            for s in result]
    return table(rows, ["SPI", "PROTO", "DIR", "MODE", "ADDRESSES", "ALGORITHMS", "ENCAP", "FILTER",
                        "PACKETS", "BYTES", "SEQ", "AGE(s)"])


def show_filters(result: list[dict]) -> str:
    if not result:
        return "no filters: every packet passes in clear"
    rows = [[f["name"], f["direction"], f["source"], f["destination"], _proto(f), f["tunnel"] or "",
             f"{f['verdict']} ({f['action']})", f["packets"]] for f in result]
    return table(rows, ["FILTER", "DIR", "SOURCE", "DESTINATION", "PROTOCOL", "TUNNEL", "ACTION", "PACKETS"])


def _proto(f: dict) -> str:
    names = {1: "icmp", 6: "tcp", 17: "udp"}
    proto = names.get(f["protocol"], f["protocol"]) or "any"
    if f["source_port"] or f["destination_port"]:
        proto += f" {f['source_port'] or 'any'}->{f['destination_port'] or 'any'}"
    return proto


def show_stats(result: dict) -> str:
    labels = result["labels"]
    return table([[labels[k], v] for k, v in result["counters"].items()], ["COUNTER", "VALUE"])


VIEWS = {"status": show_status, "sa": show_sas, "filters": show_filters, "stats": show_stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipsecctl", description="monitor and administer ipsecd")
    parser.add_argument("-s", "--socket", default=config.DriverSettings.socket, help="ipsecd control socket")
    parser.add_argument("command", choices=[*VIEWS, "keys", "reload"])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--wireshark", action="store_true", help="keys: esp_sa table (the default)")
    parser.add_argument("--tshark", action="store_true", help="keys: tshark -o options, one per line")
    parser.add_argument("-o", "--output", help="keys: write to this file instead of stdout")
    args = parser.parse_args(argv)
    try:
        result = request(args.socket, args.command)
    except ControlError as e:
        print(f"ipsecctl: {e}", file=sys.stderr)
        return 1
    if args.command == "keys":
        text = "\n".join(result["tshark_args"]) + "\n" if args.tshark else result["esp_sa"]
        if args.json:
            text = json.dumps(result, indent=2) + "\n"
        if args.output:
            with open(args.output, "w") as out:
                out.write(text)
        else:
            sys.stdout.write(text)
    elif args.json:
        print(json.dumps(result, indent=2))
    elif args.command == "reload":
        print(result)
    else:
        print(VIEWS[args.command](result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
