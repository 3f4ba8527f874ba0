"""Run inside a member container: the directory store as member-a$ (keytab only), printing JSON.
Used by tests/lab/test_directory_store.py.

    python3 directory_store_probe.py sync [POLLS]   assigned policy, stamp, load; POLLS no-change polls timed
    python3 directory_store_probe.py watch SECONDS  load, 'ready', poll every 0.1 s until the stamp moves
"""

import json
import statistics
import sys
import time

from ipsecd.policy.directory_store import DirectoryStore
from ipsecd.policy.ldap_directory import Credentials, DirectoryServer
from ipsecd.policy.validate import PolicyError

FILES = "/etc/ipsec-lab"


def make_store() -> DirectoryStore:
    server = DirectoryServer("10.0.0.10", "dc.lab.test", "LAB.TEST", f"{FILES}/ca.pem", timeout=1.0)
    credentials = Credentials("member-a$", keytab=f"{FILES}/member-a.keytab", ccache="/run/ipsecd-krb5cc")
    return DirectoryStore(server, credentials, "/var/lib/ipsecd/cache")


def describe(store: DirectoryStore, policy) -> dict:
    return {**store.status.to_dict(), "name": policy.name, "guid": str(policy.guid),
            "when_changed_unix": store.status.when_changed,
            "rules": sorted(r.name for r in policy.rules),
            "ports": sorted(f.destination_port or 0 for r in policy.rules for f in r.filter_list.filters)}


def sync(polls: int = 0) -> dict:
    store = make_store()
    started = time.monotonic()
    try:
        ref = store.assigned_policy()
        if ref is None:
            return {"assigned": None, **store.status.to_dict()}
        stamp = store.change_stamp(ref)
        policy = store.load(ref)
    except PolicyError as e:
        return {"refused": str(e), **store.status.to_dict()}
    elapsed = time.monotonic() - started
    times = []
    for _ in range(polls):
        t = time.monotonic()
        assert store.assigned_policy() == ref and store.change_stamp(ref) == stamp
        times.append(time.monotonic() - t)
    return {**describe(store, policy), "seconds": round(elapsed, 3), "stamp": [list(s) for s in stamp],
            "poll_ms": round(statistics.median(times) * 1000, 3) if times else None}


def watch(seconds: float) -> dict:
    store = make_store()
    ref = store.assigned_policy()
    stamp = store.change_stamp(ref)
    store.load(ref)
    print("ready", flush=True)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        now = store.change_stamp(ref)
        if now != stamp:
            moved = sorted(k for (k, u) in set(now) - set(stamp))
            return {**describe(store, store.load(ref)), "moved": moved,
                    "detected_after": round(time.monotonic() - started, 3)}
        time.sleep(0.1)
    return {"moved": None}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    result = sync(*(int(a) for a in args)) if mode == "sync" else watch(float(args[0]))
    print(json.dumps(result))
