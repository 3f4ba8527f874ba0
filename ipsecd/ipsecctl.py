"""ipsecctl: look at a running ipsecd (the ipsecmon of this lab) and administer it.

    ipsecctl status                         components, the policy in force, SA and filter counts
    ipsecctl sa | filters | stats [--json]  the driver's SAs (SAD), its filters (SPD), every counter
    ipsecctl keys --wireshark [-o DIR]      Wireshark's esp_sa and ikev1_decryption_table UAT files, written
                                            into DIR (made if missing: a Wireshark profile or configuration
                                            folder); without -o both tables on stdout, '#'-headed
    ipsecctl keys --tshark [-o FILE]        the same as tshark -o options, one per line
    ipsecctl reload                         re-read the configuration file

With a policy (docs/ike.md):

    ipsecctl policy [--all]                 the assigned policy as its file reads (pre-shared keys hidden);
                                            --all: every policy in the store
    ipsecctl filters --generic|--specific   the policy's filters as written / as expanded for the driver
    ipsecctl mmsa | qmsa                    main mode (ISAKMP) and quick mode SAs (EXPIRES IN: seconds)
    ipsecctl stats                          the driver's counters and IKE's (ike_oakley_main_modes, ...)
    ipsecctl events [--since AGE]           policy and negotiation events, oldest first; AGE: 90, 90s,
                                            5min or 2h
    ipsecctl refresh                        re-read the policy now (gpupdate); SAs of changed rules go
    ipsecctl export FILE | import FILE [--assign]

On a domain member (policy.directory in ipsecd.yaml, docs/directory.md), `ipsecctl policy` says first where
the policy came from (directory, cache or local store), its ipsecID, whenChanged and GPO, and

    ipsecctl static COMMAND ...             administer the directory's policies and Group Policy objects
                                            (netsh ipsec static): list, show, create, import, export,
                                            delete, gpo create|link|unlink|block|delete|list, assign,
                                            unassign, resolve; the DC's address, realm and CA default to
                                            ipsecd.yaml's; administrator credentials: --password-file,
                                            $IPSEC_ADMIN_PASSWORD or --keytab

Exit code 0 on success, 1 when ipsecd refuses or cannot be reached (the reason on stderr), 2 for a command
line ipsecctl does not understand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import yaml

from ipsecd import config
from ipsecd.control import ControlError, request
from ipsecd.policy import policyfile
from ipsecd.yaml_lines import did_you_mean

CELL: dict[bool | None, str] = {True: "yes", False: "no", None: ""}


def table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [headers, *[[CELL.get(c, str(c)) if isinstance(c, bool | None) else str(c) for c in row]
                        for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    return "\n".join(lines)


def show_status(result: dict) -> str:
    c = result["counters"]
    k = result.get("keying")
    keying = (f"policy: {k['policy'] or 'none assigned'}   IKE on {k['ike_address']}: "
              f"{k['main_mode_sas']} main mode SAs, {k['quick_mode_sas']} quick mode SAs" if k
              else "manual keys (no policy, no IKE)")
    return "\n".join([
        f"ipsecd pid {result['pid']}, up {result['uptime_seconds']} s, configuration {result['config']}",
        keying,
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


def show_rows(columns: list[str], empty: str):
    """A view of a list of dicts (mmsa, qmsa, policy filters) as a table of the given keys."""
    def view(result: list[dict]) -> str:
        if not result:
            return empty
        return table([[row.get(c) for c in columns] for row in result], [c.upper() for c in columns])
    return view


def show_events(result: list[dict]) -> str:
    if not result:
        return "no events"
    return "\n".join(f"{time.strftime('%H:%M:%S', time.gmtime(e['time']))} {e['kind']}: {e['text']}"
                     for e in result)


def show_policy(result: dict | list | None) -> str:
    if result is None:
        return "no policy assigned"
    if isinstance(result, list):  # --all
        columns = ["name", "guid", "when_changed", "assigned", "location"]
        return show_rows(columns, "the store is empty")(result)
    source = result.pop("source", None)
    lines = [show_source(source)] if source else []
    policy = yaml.safe_dump(result, sort_keys=False, width=110).rstrip() if result else "no policy assigned"
    lines.append(policy)
    return "\n".join(lines)


def show_source(s: dict) -> str:
    """Where a domain member's policy came from, as one or two lines."""
    where = {"directory": f"from the directory ({s['dc']})", "cache": "from the local cache",
             "local": "from the local store", "none": "none"}.get(s["source"], s["source"])
    details = [f"{k} {s[v]}" for k, v in (("GPO", "gpo"), ("ipsecID", "ipsec_id"),
                                          ("whenChanged", "when_changed")) if s.get(v)]
    text = f"# policy source: {where}" + (f"; {', '.join(details)}" if details else "")
    return text + (f"\n# because: {s['reason']}" if s.get("reason") else "")


def show_refresh(result: dict) -> str:
    if not result["policy"]:
        return "no policy assigned"
    return f"policy {result['policy']!r}: {result['change']['text']}"


VIEWS = {"status": show_status, "sa": show_sas, "filters": show_filters, "stats": show_stats,
         "mmsa": show_rows(["cookies", "remote", "role", "algorithms", "authentication", "peer identity",
                            "nat", "expires in"], "no main mode SAs"),
         "qmsa": show_rows(["peer", "inbound spi", "outbound spi", "security method", "mode", "local",
                            "remote", "udp encapsulation", "expires in"], "no quick mode SAs"),
         "events": show_events, "policy": show_policy, "refresh": show_refresh}
GENERIC = show_rows(["rule", "filter", "source", "destination", "protocol", "source_port", "destination_port",
                     "mirrored", "action", "tunnel"], "no policy filters")
SPECIFIC = show_rows(["name", "direction", "source", "destination", "protocol", "source_port",
                      "destination_port", "action", "tunnel"], "no policy filters")


def request_for(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The control command and its arguments for what was typed."""
    if args.command == "filters" and (args.generic or args.specific):
        return "policy_filters", {"kind": "generic" if args.generic else "specific"}
    if args.command == "policy" and args.all:
        return "policies", {}
    if args.command in ("export", "import"):
        if not args.path:
            raise SystemExit(f"ipsecctl {args.command}: name the policy file")
        extra = {"assign": True} if args.assign else {}
        return args.command, {"file": os.path.abspath(args.path), **extra}
    if args.command == "events" and args.since:
        return "events", {"since": time.time() - args.since}
    return args.command, {}


def write_keys(result: dict, args: argparse.Namespace) -> None:
    if args.json:
        text = json.dumps(result, indent=2) + "\n"
    elif args.tshark:
        text = "\n".join(result["tshark_args"]) + "\n"
    elif args.output:  # a Wireshark profile (or WIRESHARK_CONFIG_DIR) folder: one file per UAT table
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise SystemExit(f"ipsecctl keys -o {args.output}: not a folder (Wireshark reads one file per "
                             "table: esp_sa, ikev1_decryption_table)")
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "esp_sa"), "w") as out:
            out.write(result["esp_sa"])
        with open(os.path.join(args.output, "ikev1_decryption_table"), "w") as out:
            out.write("".join(row + "\n" for row in result.get("ikev1_decryption_table", [])))
        return
    else:
        text = result["esp_sa"]
        if result.get("ikev1_decryption_table"):  # stdout: both tables, each after a "#" line
            text = ("# esp_sa\n" + text + "# ikev1_decryption_table\n"
                    + "".join(row + "\n" for row in result["ikev1_decryption_table"]))
    if args.output:
        with open(args.output, "w") as out:
            out.write(text)
    else:
        sys.stdout.write(text)


COMMANDS = [*VIEWS, "keys", "reload", "export", "import", "static"]
#: The options that say something to one command only: given to another, they are refused, not ignored.
OPTION_COMMANDS = {"generic": "filters", "specific": "filters", "all": "policy", "assign": "import",
                   "since": "events", "wireshark": "keys", "tshark": "keys", "output": "keys"}


def age(text: str) -> float:
    """--since: seconds, bare or as a policy file's durations say them (90s, 5min, 2h)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float(policyfile.parse_duration(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age such as 90, 90s, 5min or 2h") from None


def make_parser() -> argparse.ArgumentParser:
    """The command line; --help shows this module's docstring: every command and what it shows."""
    parser = argparse.ArgumentParser(prog="ipsecctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--socket", default=config.DriverSettings.socket, help="ipsecd control socket")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND",
                        help=f"{', '.join(COMMANDS)} (above); static: see `ipsecctl static --help`")
    parser.add_argument("path", nargs="?", help="export/import: the policy file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--generic", action="store_true", help="filters: the policy's filters as written")
    parser.add_argument("--specific", action="store_true", help="filters: as expanded for the driver")
    parser.add_argument("--all", action="store_true", help="policy: every policy in the store")
    parser.add_argument("--assign", action="store_true", help="import: assign the imported policy")
    parser.add_argument("--since", type=age, metavar="AGE",
                        help="events: only the last AGE (90, 90s, 5min, 2h)")
    parser.add_argument("--wireshark", action="store_true", help="keys: esp_sa table (the default)")
    parser.add_argument("--tshark", action="store_true", help="keys: tshark -o options, one per line")
    parser.add_argument("-o", "--output", help="keys: the folder for the Wireshark tables (--tshark, --json: "
                        "a file) instead of stdout")
    return parser


def static(argv: list[str], config_path: str = str(config.DEFAULT_PATH)) -> int:
    """`ipsecctl static ...`: the directory administration command line, where the DC is taken from this
    node's ipsecd.yaml (policy.directory) unless given."""
    from ipsecd.policy import directory_admin

    try:
        directory = config.load(config_path).policy
    except config.ConfigError:
        directory = None  # not a configured member: the options or $IPSEC_* say where the DC is
    d = directory.directory if directory else None
    if d is not None:
        defaults = (("IPSEC_DC_ADDRESS", d.dc), ("IPSEC_REALM", d.realm), ("IPSEC_DC_NAME", d.dc_name),
                    ("IPSEC_DC_CA", d.ca), ("KRB5_CONFIG", d.krb5_config))
        for name, value in defaults:
            if value is not None:
                os.environ.setdefault(name, str(value))
    return directory_admin.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["static"]:
        return static(argv[1:])
    if argv[:1] and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        print(f"ipsecctl: no command {argv[0]!r}{did_you_mean(argv[0], COMMANDS)}; one of "
              f"{', '.join(COMMANDS)} (ipsecctl --help says what each shows)", file=sys.stderr)
        return 2
    parser = make_parser()
    args = parser.parse_args(argv)
    for option, command in OPTION_COMMANDS.items():
        if getattr(args, option) not in (None, False) and args.command != command:
            parser.error(f"--{option} is an option of `ipsecctl {command}`, not of `ipsecctl {args.command}`")
    command, command_args = request_for(args)
    try:
        result = request(args.socket, command, **command_args)
    except ControlError as e:
        print(f"ipsecctl: {e}", file=sys.stderr)
        return 1
    if command == "keys":
        write_keys(result, args)
    elif args.json:
        print(json.dumps(result, indent=2))
    elif command in ("reload", "export", "import"):
        print(result if command == "reload" else json.dumps(result))
    elif command == "policy_filters":
        print((GENERIC if args.generic else SPECIFIC)(result))
    elif command == "policies":
        print(show_policy(result))
    else:
        print(VIEWS[command](result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
