"""Fuzzers for ipsecd's hostile-input surfaces: the IKE state machine, the driver's inbound data path and
the policy reader with the Policy Agent (as strongSwan's fuzz_ikev1 and fuzz_esp do for charon and libipsec).

``python -m fuzz [TARGET...] [--inputs N] [--seconds S] [--seed K]``; ``make fuzz`` runs every target at
length, ``make test`` briefly (tests/unit/test_fuzz.py).
"""
