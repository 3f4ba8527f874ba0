"""The keys of a lab's ipsecd nodes, beside its pcaps, so that every capture opens decrypted.

Each ipsecd node writes Wireshark's two UAT tables (`ipsecctl keys --wireshark -o DIR`: `esp_sa` and
`ikev1_decryption_table`); `collect` merges those of every node into `<pcap folder>/wireshark/`, a
Wireshark configuration folder: `lab decode PCAP` (tshark) reads it, and Wireshark does too when started as
`WIRESHARK_CONFIG_DIR=<folder>/wireshark wireshark PCAP` or when the two files are copied into a profile.
Tables only grow (a line once collected stays), so SAs of earlier negotiations still decrypt.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from lab.backend import LabError

if TYPE_CHECKING:
    from lab.running import Lab

log = logging.getLogger("lab")

FOLDER = "wireshark"
TABLES = ("esp_sa", "ikev1_decryption_table")
IN_NODE = "/run/lab/wireshark"
#: tshark preferences that make it use the esp_sa table (the IKE table needs none).
ESP_PREFERENCES = ("esp.enable_encryption_decode:TRUE", "esp.enable_authentication_check:TRUE")
#: `lab decode`'s columns: tshark's own plus the ESP SPI, so that a decrypted packet still shows it was ESP.
COLUMNS = ('gui.column.format:"No.","%m","Time","%t","Source","%s","Destination","%d","Protocol","%p",'
           '"Length","%L","ESP SPI","%Cus:esp.spi:0:U","Info","%i"')


def collect(lab: Lab, pcap_folder: Path) -> Path | None:
    """Merge the key tables of every node running ipsecd into pcap_folder/wireshark; the folder, or None
    when no node runs ipsecd."""
    tables: dict[str, list[str]] = {}
    for node in lab.nodes.values():
        if "ipsecd" not in node.services.services:
            continue
        try:
            if not node.exec(["ipsecctl", "keys", "--wireshark", "-o", IN_NODE]).ok:
                continue  # ipsecd is not running there
            for table in TABLES:
                tables.setdefault(table, []).extend(node.get_file(f"{IN_NODE}/{table}").decode().splitlines())
        except LabError as exc:  # a node gone down keeps the others' keys worth saving
            log.warning("%s: no keys collected: %s", node.name, exc)
    if not tables:
        return None
    folder = pcap_folder / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        path = folder / table
        known = path.read_text().splitlines() if path.exists() else []
        lines = list(dict.fromkeys(line for line in [*known, *tables.get(table, [])] if line.strip()))
        path.write_text("".join(f"{line}\n" for line in lines))
    return folder


def tshark_environment(keys: Path) -> tuple[list[str], dict[str, str]]:
    """The tshark options and environment that decrypt with the key tables in folder `keys`."""
    options = [a for p in ESP_PREFERENCES for a in ("-o", p)]
    return options, {**os.environ, "WIRESHARK_CONFIG_DIR": str(keys)}


def decode(pcap: Path, keys: Path | None = None, tshark_args: list[str] | None = None) -> int:
    """Print the conversation in `pcap` as tshark decodes it with the key tables in `keys` (default: the
    wireshark/ folder beside the pcap); tshark's exit status."""
    keys = keys or pcap.parent / FOLDER
    if not all((keys / table).is_file() for table in TABLES):
        print(f"lab: no key tables in {keys} (collected by `lab capture stop` from ipsecd nodes): "
              "ESP stays encrypted", flush=True)
    options, env = tshark_environment(keys)
    if not tshark_args:
        print("(an ESP packet shows its SPI after the length, then what it carries, decrypted)", flush=True)
    return subprocess.call(["tshark", "-n", "-r", str(pcap), *options, "-o", COLUMNS, *(tshark_args or [])],
                           env=env)
