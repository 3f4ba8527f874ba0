"""IKE keys as Wireshark/tshark decryption tables (lab use: every packet of a test can be read back).

``ikev1_decryption_table`` rows are ``CKY-I,Ka`` in unquoted hex, exactly the UAT format
(`-o uat:ikev1_decryption_table:<row>`); Wireshark derives the IVs itself from the KE payloads.
The ESP rows (esp_sa) come from ipsecd/driver/keyexport.py, which owns that table.
"""

from __future__ import annotations

from collections.abc import Iterable

from ipsecd.ike.sa import IsakmpSA


def ikev1_decryption_table(sas: Iterable[IsakmpSA]) -> list[str]:
    return [f"{sa.icookie.hex()},{sa.keys.ka.hex()}" for sa in sas]
