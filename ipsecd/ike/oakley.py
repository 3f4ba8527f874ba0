"""Oakley: Diffie-Hellman groups, PRFs, phase 1 ciphers and the RFC 2409 key derivation.

Everything here is a pure function of bytes, so each formula can be pinned by a
known-answer test (the strongSwan captures in ../shared/vectors/strongswan-ikev1).

>>> suite = Phase1Suite("3des-cbc", "sha1", 2)
>>> keys = derive_phase1(suite, skeyid_psk(suite, b"k", b"ni", b"nr"), b"\\x01" * 128, bytes(8), bytes(8))
>>> len(keys.ka), len(keys.skeyid_e)
(24, 20)
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ipsecd import algorithms

if TYPE_CHECKING:  # cryptography is imported by the first exchange that needs it (ipsecd.algorithms)
    from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher

# --- Diffie-Hellman groups (RFC 2409 §6.1, §6.2; RFC 3526 §3) --------------------------------------

MODP_768 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A3620FFFFFFFFFFFFFFFF",
    16,
)
MODP_1024 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
    16,
)
MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)


@functools.cache  # at the first exchange in the group: cryptography is not loaded before one needs it
def _openssl_modexp(prime: int, generator: int):
    """OpenSSL's modular exponentiation for a group it knows (it skips its slow parameter checks for
    RFC 3526 primes: about 1 ms for group 14 against 7-10 ms for Python's pow); None when unavailable."""
    try:
        from cryptography.hazmat.primitives.asymmetric import dh
    except ImportError:  # pragma: no cover - FFDH may leave cryptography one day
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FFDH is deprecated in cryptography; IKEv1 needs it
        numbers = dh.DHParameterNumbers(prime, generator)

    def modexp(base: int, exponent: int) -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            key = dh.DHPrivateNumbers(exponent, dh.DHPublicNumbers(generator, numbers)).private_key()
            return int.from_bytes(key.exchange(dh.DHPublicNumbers(base, numbers).public_key()), "big")

    return modexp


@dataclass(frozen=True)
class Group:
    """A MODP group; public values and shared secrets are big-endian, padded to the modulus."""

    number: int
    name: str
    prime: int
    generator: int = 2
    private_bits: int = 256  # >= twice the group strength (RFC 3526 §8)
    openssl: bool = False  # OpenSSL recognises the prime and exponentiates fast

    @property
    def size(self) -> int:
        return (self.prime.bit_length() + 7) // 8

    def _modexp(self, base: int, exponent: int) -> int:
        fast = _openssl_modexp(self.prime, self.generator) if self.openssl else None
        return fast(base, exponent) if fast else pow(base, exponent, self.prime)

    def private_key(self) -> int:
        return secrets.randbits(self.private_bits) | 1 << (self.private_bits - 1)

    def public_key(self, private: int) -> bytes:
        return self._modexp(self.generator, private).to_bytes(self.size, "big")

    def shared_secret(self, private: int, peer_public: bytes) -> bytes:
        """g^xy; ValueError when the peer's value has the wrong size or is degenerate (1, p-1...)."""
        if len(peer_public) != self.size:
            raise ValueError(f"{self.name} public value must be {self.size} bytes, got {len(peer_public)}")
        y = int.from_bytes(peer_public, "big")
        if not 1 < y < self.prime - 1:
            raise ValueError(f"{self.name} public value out of range")
        return self._modexp(y, private).to_bytes(self.size, "big")


GROUPS = {
    g.number: g
    for g in (
        Group(1, "MODP 768 (group 1)", MODP_768),
        Group(2, "MODP 1024 (group 2)", MODP_1024),
        Group(14, "MODP 2048 (group 14)", MODP_2048, openssl=True),
    )
}

# --- hashes, PRF, phase 1 ciphers ------------------------------------------------------------------


@dataclass(frozen=True)
class HashAlg:
    name: str
    oakley_id: int
    hashlib_name: str

    @property
    def size(self) -> int:
        return hashlib.new(self.hashlib_name).digest_size

    def hash(self, data: bytes) -> bytes:
        return hashlib.new(self.hashlib_name, data).digest()

    def prf(self, key: bytes, data: bytes) -> bytes:
        """The HMAC version of the negotiated hash is the PRF (RFC 2409 §4)."""
        return hmac.digest(key, data, self.hashlib_name)


HASHES = {
    h.name: h for h in (HashAlg("md5", 1, "md5"), HashAlg("sha1", 2, "sha1"), HashAlg("sha256", 4, "sha256"))
}


@dataclass(frozen=True)
class CipherAlg:
    """A phase 1 cipher: a CBC row of the algorithm table (ipsecd.algorithms) that has an Oakley number."""

    algorithm: algorithms.Encryption
    make: Callable[[bytes], BlockCipherAlgorithm]  # the row's cipher: key -> block cipher
    oakley_id: int  # the row's Oakley Encryption Algorithm value

    @property
    def name(self) -> str:
        return self.algorithm.name

    @property
    def key_size(self) -> int:
        return self.algorithm.key_size

    @property
    def block_size(self) -> int:
        return self.algorithm.block_size

    @property
    def variable_key(self) -> bool:
        """AES carries a Key-Length attribute."""
        return self.algorithm.ikev1_key_length is not None

    def _cipher(self, key: bytes, iv: bytes) -> Cipher:
        from cryptography.hazmat.primitives.ciphers import Cipher, modes  # with the first exchange
        return Cipher(self.make(key), modes.CBC(iv))

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes) -> bytes:
        """CBC, zero-padded to the block size (the payload chain says where the data ends)."""
        padded = plaintext + bytes(-len(plaintext) % self.block_size)
        enc = self._cipher(key, iv).encryptor()
        return enc.update(padded) + enc.finalize()

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
        if not ciphertext or len(ciphertext) % self.block_size:
            raise ValueError(
                f"ciphertext of {len(ciphertext)} bytes is not a multiple of the "
                f"{self.name} block size {self.block_size}"
            )
        dec = self._cipher(key, iv).decryptor()
        return dec.update(ciphertext) + dec.finalize()


CIPHERS = {e.name: CipherAlg(e, e.cipher, e.oakley_id) for e in algorithms.ENCRYPTIONS.values()
           if e.oakley_id is not None and e.cipher is not None}


@dataclass(frozen=True)
class Phase1Suite:
    """The negotiated main mode algorithms, by name ("3des-cbc", "sha1", group 2)."""

    cipher_name: str
    hash_name: str
    group_number: int

    @property
    def cipher(self) -> CipherAlg:
        return CIPHERS[self.cipher_name]

    @property
    def hash(self) -> HashAlg:
        return HASHES[self.hash_name]

    @property
    def group(self) -> Group:
        return GROUPS[self.group_number]

    def describe(self) -> str:
        return f"{self.cipher.algorithm.windows}/{self.hash_name.upper()}/group {self.group_number}"


# --- RFC 2409 §5 key derivation -------------------------------------------------------------------


def skeyid_psk(suite: Phase1Suite, psk: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYID = prf(pre-shared-key, Ni_b | Nr_b) (RFC 2409 §5.4)."""
    return suite.hash.prf(psk, ni + nr)


def skeyid_signature(suite: Phase1Suite, ni: bytes, nr: bytes, gxy: bytes) -> bytes:
    """SKEYID = prf(Ni_b | Nr_b, g^xy) (RFC 2409 §5.1)."""
    return suite.hash.prf(ni + nr, gxy)


@dataclass(frozen=True)
class Phase1Keys:
    skeyid: bytes
    skeyid_d: bytes
    skeyid_a: bytes
    skeyid_e: bytes
    ka: bytes  # the phase 1 cipher key (App. B expansion of SKEYID_e)


def derive_phase1(
    suite: Phase1Suite, skeyid: bytes, gxy: bytes, cky_i: bytes, cky_r: bytes, key_size: int | None = None
) -> Phase1Keys:
    prf = suite.hash.prf
    d = prf(skeyid, gxy + cky_i + cky_r + b"\x00")
    a = prf(skeyid, d + gxy + cky_i + cky_r + b"\x01")
    e = prf(skeyid, a + gxy + cky_i + cky_r + b"\x02")
    return Phase1Keys(skeyid, d, a, e, expand_ka(suite, e, key_size or suite.cipher.key_size))


def expand_ka(suite: Phase1Suite, skeyid_e: bytes, size: int) -> bytes:
    """Ka = K1 | K2 | ..., K1 = prf(SKEYID_e, 0), Kn = prf(SKEYID_e, Kn-1) when SKEYID_e is short."""
    if len(skeyid_e) >= size:
        return skeyid_e[:size]
    out, block = b"", b"\x00"
    while len(out) < size:
        block = suite.hash.prf(skeyid_e, block)
        out += block
    return out[:size]


def phase1_iv(suite: Phase1Suite, gxi: bytes, gxr: bytes) -> bytes:
    """IV = hash(g^xi | g^xr) truncated to the block size (App. B)."""
    return suite.hash.hash(gxi + gxr)[: suite.cipher.block_size]


def phase2_iv(suite: Phase1Suite, last_phase1_block: bytes, message_id: int) -> bytes:
    """IV of a quick mode / informational exchange: hash(last phase 1 block | M-ID) (App. B)."""
    return suite.hash.hash(last_phase1_block + message_id.to_bytes(4, "big"))[: suite.cipher.block_size]


def phase1_hash(
    suite: Phase1Suite,
    skeyid: bytes,
    gxi: bytes,
    gxr: bytes,
    cky_i: bytes,
    cky_r: bytes,
    sai_b: bytes,
    id_b: bytes,
    *,
    initiator: bool,
) -> bytes:
    """HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b); HASH_R swaps the roles of the
    KE values and cookies, with IDir_b (RFC 2409 §5). Bodies without their generic payload headers."""
    exchange = gxi + gxr + cky_i + cky_r if initiator else gxr + gxi + cky_r + cky_i
    return suite.hash.prf(skeyid, exchange + sai_b + id_b)


# --- quick mode and informational (RFC 2409 §5.5, §5.7) -------------------------------------------


def _mid(message_id: int) -> bytes:
    return message_id.to_bytes(4, "big")


def qm_hash1(suite: Phase1Suite, skeyid_a: bytes, message_id: int, rest: bytes) -> bytes:
    """HASH(1) = prf(SKEYID_a, M-ID | everything after the HASH payload); also informational HASH(1)."""
    return suite.hash.prf(skeyid_a, _mid(message_id) + rest)


def qm_hash2(suite: Phase1Suite, skeyid_a: bytes, message_id: int, ni: bytes, rest: bytes) -> bytes:
    """HASH(2) = prf(SKEYID_a, M-ID | Ni_b | everything after the HASH payload)."""
    return suite.hash.prf(skeyid_a, _mid(message_id) + ni + rest)


def qm_hash3(suite: Phase1Suite, skeyid_a: bytes, message_id: int, ni: bytes, nr: bytes) -> bytes:
    """HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b)."""
    return suite.hash.prf(skeyid_a, b"\x00" + _mid(message_id) + ni + nr)


def keymat(
    suite: Phase1Suite,
    skeyid_d: bytes,
    protocol: int,
    spi: bytes,
    ni: bytes,
    nr: bytes,
    size: int,
    gxy_qm: bytes = b"",
) -> bytes:
    """KEYMAT for one direction (the SPI its receiver chose), expanded to ``size`` bytes."""
    seed = gxy_qm + bytes([protocol]) + spi + ni + nr
    out, block = b"", b""
    while len(out) < size:
        block = suite.hash.prf(skeyid_d, block + seed)
        out += block
    return out[:size]
