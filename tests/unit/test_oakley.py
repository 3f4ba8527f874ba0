"""Oakley key derivation against a real strongSwan IKEv1 exchange (../shared/vectors/strongswan-ikev1).

From the capture (cookies, SA, KE, nonces), the PSK and the DH secret strongSwan logged, our code must
derive strongSwan's SKEYIDs, Ka and IVs, decrypt main mode 5-6 and the quick mode, verify every hash,
derive the ESP keys strongSwan installed, and those keys must decrypt the captured ESP (scapy's
SecurityAssociation as the independent ESP implementation).
"""

import pytest
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.tls.crypto import groups as scapy_groups

from ipsecd.ike import isakmp as I
from ipsecd.ike import oakley
from tests.vectors import strongswan_ikev1 as vectors

SUITES = {
    "v1-3des-sha1-modp1024": oakley.Phase1Suite("3des-cbc", "sha1", 2),
    "v1-aes128-sha1-modp2048": oakley.Phase1Suite("aes-cbc-128", "sha1", 14),
}


class Replay:
    """The captured exchange decrypted step by step with our derivations."""

    def __init__(self, case: str):
        self.case = vectors.load(case)
        self.suite = SUITES[case]
        msgs = [I.Message.decode(d.data) for d in self.case.ike()[:9]]
        self.mm1, self.mm2, self.mm3, self.mm4, self.mm5, self.mm6, *self.qm = msgs
        self.gxi, self.ni = self.mm3.first(I.KE).data, self.mm3.first(I.Nonce).data
        self.gxr, self.nr = self.mm4.first(I.KE).data, self.mm4.first(I.Nonce).data
        self.gxy = self.case.value("shared Diffie Hellman secret")
        self.skeyid = oakley.skeyid_psk(self.suite, vectors.PSK, self.ni, self.nr)
        self.keys = oakley.derive_phase1(
            self.suite, self.skeyid, self.gxy, self.mm1.icookie, self.mm2.rcookie
        )
        self.block = self.suite.cipher.block_size

    def decrypt(self, msg: I.Message, iv: bytes) -> list[I.Payload]:
        plain = self.suite.cipher.decrypt(self.keys.ka, iv, msg.body)
        return I.parse_payloads(msg.next_payload, plain, padded=True)

    def main_mode_5_6(self):
        iv = oakley.phase1_iv(self.suite, self.gxi, self.gxr)
        return self.decrypt(self.mm5, iv), self.decrypt(self.mm6, self.mm5.body[-self.block :])

    def quick_mode(self):
        iv = oakley.phase2_iv(self.suite, self.mm6.body[-self.block :], self.qm[0].message_id)
        out = []
        for msg in self.qm:
            out.append(self.decrypt(msg, iv))
            iv = msg.body[-self.block :]
        return out


@pytest.fixture(params=vectors.CASES, scope="module")
def replay(request):
    return Replay(request.param)


def test_groups_match_scapy_copy_of_the_rfcs():
    assert oakley.GROUPS[1].prime == scapy_groups.modp768.m
    assert oakley.GROUPS[2].prime == scapy_groups.modp1024.m
    assert oakley.GROUPS[14].prime == scapy_groups.modp2048.m


@pytest.mark.parametrize("number", [1, 2, 14])
def test_diffie_hellman_agrees_and_rejects_degenerate_values(number):
    group = oakley.GROUPS[number]
    a, b = group.private_key(), group.private_key()
    pa, pb = group.public_key(a), group.public_key(b)
    assert len(pa) == group.size and group.shared_secret(a, pb) == group.shared_secret(b, pa)
    for bad in (b"\x01".rjust(group.size, b"\0"), (group.prime - 1).to_bytes(group.size, "big"), pa[1:]):
        with pytest.raises(ValueError):
            group.shared_secret(a, bad)


def test_skeyids_and_ka_match_strongswan(replay):
    kdf, logged = replay.case.kdf, replay.case.logged
    assert replay.keys.skeyid == kdf["SKEYID"] == logged["SKEYID"][0]
    assert replay.keys.skeyid_d == kdf["SKEYID_d"]
    assert replay.keys.skeyid_a == kdf["SKEYID_a"]
    assert replay.keys.skeyid_e == kdf["SKEYID_e"]
    assert replay.keys.ka == kdf["encryption key Ka"] == replay.case.ka
    assert oakley.phase1_iv(replay.suite, replay.gxi, replay.gxr) == replay.case.value("initial IV")


def test_main_mode_5_6_decrypt_and_hashes_verify(replay):
    mm5, mm6 = replay.main_mode_5_6()
    assert I.payload_names(mm5) == "ID, HASH, NOTIFY" and I.payload_names(mm6) == "ID, HASH"
    assert mm5[2].notify_type == I.NotifyType.INITIAL_CONTACT
    sai_b = replay.mm1.first(I.SA).body()
    r = replay
    args = (r.suite, r.skeyid, r.gxi, r.gxr, r.mm1.icookie, r.mm2.rcookie, sai_b)
    assert (
        oakley.phase1_hash(*args, mm5[0].body(), initiator=True) == mm5[1].data == replay.case.value("HASH_I")
    )
    assert (
        oakley.phase1_hash(*args, mm6[0].body(), initiator=False)
        == mm6[1].data
        == replay.case.value("HASH_R")
    )


def test_quick_mode_decrypts_hashes_and_keymat(replay):
    qm1, qm2, qm3 = replay.quick_mode()
    assert I.payload_names(qm1) == I.payload_names(qm2) == "HASH, SA, NONCE, ID, ID"
    suite, ska, mid = replay.suite, replay.keys.skeyid_a, replay.qm[0].message_id
    ni, nr = qm1[2].data, qm2[2].data
    assert oakley.qm_hash1(suite, ska, mid, I.build_payloads(qm1[1:])[1]) == qm1[0].data
    assert oakley.qm_hash2(suite, ska, mid, ni, I.build_payloads(qm2[1:])[1]) == qm2[0].data
    assert oakley.qm_hash3(suite, ska, mid, ni, nr) == qm3[0].data == replay.case.value("Hash(3)")
    spis = {qm1[1].proposals[0].spi, qm2[1].proposals[0].spi}
    for esp in replay.case.esp:
        spi = esp.spi.to_bytes(4, "big")
        assert spi in spis
        size = len(esp.enc_key) + len(esp.integ_key)
        assert oakley.keymat(suite, replay.keys.skeyid_d, 3, spi, ni, nr, size) == esp.enc_key + esp.integ_key


def test_derived_esp_keys_decrypt_the_captured_esp(replay):
    qm1, qm2, _ = replay.quick_mode()
    ni, nr = qm1[2].data, qm2[2].data
    crypt = "3DES" if "3des" in replay.case.name else "AES-CBC"
    size = 44 if crypt == "3DES" else 36
    sas = {}
    for spi in (qm1[1].proposals[0].spi, qm2[1].proposals[0].spi):
        km = oakley.keymat(replay.suite, replay.keys.skeyid_d, 3, spi, ni, nr, size)
        sas[int.from_bytes(spi, "big")] = SecurityAssociation(
            ESP,
            spi=int.from_bytes(spi, "big"),
            crypt_algo=crypt,
            crypt_key=km[: size - 20],
            auth_algo="HMAC-SHA1-96",
            auth_key=km[size - 20 :],
        )
    decrypted = 0
    for d in replay.case.datagrams:
        if d.kind != "esp":
            continue
        esp = ESP(d.data)
        outer = sas[esp.spi].decrypt(IP(src=d.src, dst=d.dst, proto=50) / esp)  # verifies the ICV
        inner = outer.getlayer(IP, 2)  # tunnel mode: the inner packet between the two LANs
        assert {inner.src.rsplit(".", 1)[0], inner.dst.rsplit(".", 1)[0]} == {"10.77.1", "10.77.2"}
        decrypted += 1
    assert decrypted > 50
