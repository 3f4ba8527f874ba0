"""ESP/AH encryption and integrity algorithms, declared as data.

The one table of algorithms: the driver, IKE and the policy layer all read these rows.
One row per algorithm: the name used everywhere in ipsecd (configuration files, policies after parsing,
IKE's offers, the SAD), the netsh spelling policies use, the sizes the wire format needs, the name
Wireshark's ``esp_sa`` table uses, the IKEv1 IPsec DOI numbers (RFC 2407 §4.4.4 transform ids, §4.5
attribute values, RFC 4106 §8.1 for AES-GCM) that quick mode proposes, and for the CBC ciphers the Oakley
number (RFC 2409 App. A) main mode proposes.

A row names cryptography's cipher and hash through a function that imports cryptography when the first
SA or IKE exchange is keyed: it is 6 MB of an ipsecd's memory, which an idle node does without (issue 16).

>>> encryption("aes-cbc-128").key_size, integrity("hmac-sha1-96").icv_size
(16, 12)
>>> encryption("aes-gcm-128").wireshark
'AES-GCM with 16 octet ICV [RFC4106]'
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # the ciphers and hashes below import cryptography when first keyed (module doc)
    from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm
    from cryptography.hazmat.primitives.hashes import HashAlgorithm


def _aes(key: bytes) -> BlockCipherAlgorithm:
    from cryptography.hazmat.primitives.ciphers.algorithms import AES
    return AES(key)


def _triple_des(key: bytes) -> BlockCipherAlgorithm:
    try:  # cryptography >= 43 moved 3DES out of the main namespace
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - older cryptography
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES
    return TripleDES(key)


def _des(key: bytes) -> BlockCipherAlgorithm:
    # Single DES (RFC 2405) is 3DES-EDE with K1 = K2 = K3: E(K) D(K) E(K) = E(K).
    # OpenSSL 3 dropped plain DES from its default provider; this keeps it working.
    return _triple_des(key * 3)


@dataclass(frozen=True)
class Encryption:
    """An ESP encryption algorithm.

    ``mode`` is "cbc" (explicit IV, RFC 2405/2451/3602), "gcm" (AEAD, RFC 4106:
    the key ends with a 4-byte salt, the ICV comes from the cipher) or "null"
    (RFC 2410).  ``block_size`` is what the payload is padded to (4 for
    stream-like modes: RFC 4303 §2.4 still wants 4-byte alignment).
    """

    name: str
    windows: str  # netsh spelling (qmsecmethods, mmsecmethods)
    mode: str
    key_size: int  # bytes, salt included for GCM
    iv_size: int
    block_size: int
    wireshark: str
    ikev1_transform: int  # RFC 2407 §4.4.4 ESP transform id
    ikev1_key_length: int | None = None  # Key Length attribute (bits), AES only
    oakley_id: int | None = None  # main mode Encryption Algorithm (RFC 2409 App. A); None: not in phase 1
    icv_size: int = 0  # AEAD tag length
    salt_size: int = 0
    cipher: Callable[[bytes], BlockCipherAlgorithm] | None = None  # key -> block cipher (CBC modes)

    @property
    def aead(self) -> bool:
        return self.mode == "gcm"


@dataclass(frozen=True)
class Integrity:
    """An HMAC integrity algorithm truncated to ``icv_size`` bytes (RFC 2403/2404/4868)."""

    name: str
    windows: str  # netsh spelling
    key_size: int
    icv_size: int
    hash_name: str  # cryptography's name of the hash (hashes.SHA1)
    wireshark: str
    ikev1_auth: int  # RFC 2407 §4.5 Authentication Algorithm attribute
    ikev1_ah_transform: int  # RFC 2407 §4.4.3 AH transform id

    def hash(self) -> HashAlgorithm:
        """cryptography's hash object for this HMAC (imported here, with the first SA: module doc)."""
        from cryptography.hazmat.primitives import hashes
        return getattr(hashes, self.hash_name)()


_Row = TypeVar("_Row", Encryption, Integrity)


def _aes_cbc(bits: int) -> Encryption:
    return Encryption(f"aes-cbc-{bits}", f"AES{bits}", "cbc", bits // 8, 16, 16, "AES-CBC [RFC3602]", 12,
                      bits, oakley_id=7, cipher=_aes)


def _aes_gcm(bits: int) -> Encryption:
    return Encryption(f"aes-gcm-{bits}", f"AES-GCM{bits}", "gcm", bits // 8 + 4, 8, 4,
                      "AES-GCM with 16 octet ICV [RFC4106]", 20, bits, icv_size=16, salt_size=4)


ENCRYPTIONS: dict[str, Encryption] = {e.name: e for e in (
    Encryption("null", "NONE", "null", 0, 0, 4, "NULL", 11),
    Encryption("des-cbc", "DES", "cbc", 8, 8, 8, "DES-CBC [RFC2405]", 2, oakley_id=1, cipher=_des),
    Encryption("3des-cbc", "3DES", "cbc", 24, 8, 8, "TripleDES-CBC [RFC2451]", 3, oakley_id=5,
               cipher=_triple_des),
    _aes_cbc(128), _aes_cbc(192), _aes_cbc(256),
    _aes_gcm(128), _aes_gcm(256),
)}

INTEGRITIES: dict[str, Integrity] = {i.name: i for i in (
    Integrity("hmac-md5-96", "MD5", 16, 12, "MD5", "HMAC-MD5-96 [RFC2403]", 1, 2),
    Integrity("hmac-sha1-96", "SHA1", 20, 12, "SHA1", "HMAC-SHA-1-96 [RFC2404]", 2, 3),
    Integrity("hmac-sha256-128", "SHA256", 32, 16, "SHA256", "HMAC-SHA-256-128 [RFC4868]", 5, 5),
)}


def _find(table: dict[str, _Row], kind: str, name: str) -> _Row:
    try:
        return table[name.lower()]
    except KeyError:
        raise ValueError(f"unknown {kind} algorithm {name!r}; known: {', '.join(table)}") from None


def encryption(name: str) -> Encryption:
    """The encryption algorithm called ``name`` (ValueError lists the known names)."""
    return _find(ENCRYPTIONS, "encryption", name)


def integrity(name: str) -> Integrity:
    """The integrity algorithm called ``name`` (ValueError lists the known names)."""
    return _find(INTEGRITIES, "integrity", name)


def keymat_length(enc: Encryption, integ: Integrity | None) -> int:
    """Bytes of KEYMAT one SA needs (RFC 2409 §5.5): the cipher key, then the HMAC key."""
    return enc.key_size + (integ.key_size if integ else 0)


def split_keymat(enc: Encryption, integ: Integrity | None, keymat: bytes) -> tuple[bytes, bytes]:
    """(encryption key, integrity key) from quick mode KEYMAT: cipher key first (RFC 2409 §5.5).

    AES-GCM takes its 4-byte salt from the end of its key material (RFC 4106 §8.1).

    >>> split_keymat(encryption("3des-cbc"), integrity("hmac-sha1-96"), bytes(range(44)))[1][:2]
    b'\\x18\\x19'
    """
    need = keymat_length(enc, integ)
    if len(keymat) < need:
        raise ValueError(f"{enc.name}+{integ.name if integ else 'none'} needs {need} bytes of KEYMAT, "
                         f"got {len(keymat)}")
    return keymat[: enc.key_size], keymat[enc.key_size: need]


def encryption_by_ikev1(transform_id: int, key_length: int | None = None) -> Encryption:
    """The ESP cipher for an IKEv1 transform id (+ Key Length attribute in bits for AES)."""
    for enc in ENCRYPTIONS.values():
        if enc.ikev1_transform == transform_id and enc.ikev1_key_length == (
                key_length if enc.ikev1_key_length is not None else None):
            return enc
    raise ValueError(f"unsupported ESP transform {transform_id} (key length {key_length})")


