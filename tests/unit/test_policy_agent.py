"""Policy Agent and local store: apply, refuse, poll, refresh, re-expand, unassign, import/export."""

import asyncio
import dataclasses
import json
import threading
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest

from ipsecd import control
from ipsecd.driver import spd
from ipsecd.policy import agent as agent_module
from ipsecd.policy import interface_manager, policyfile
from ipsecd.policy.agent import PolicyAgent
from ipsecd.policy.model import AuthKind, AuthMethod
from ipsecd.policy.predefined import predefined
from ipsecd.policy.store import LocalStore, PolicyRef, StoreUnavailable
from ipsecd.policy.validate import PolicyError

PSK = (AuthMethod(AuthKind.PRESHARED_KEY, psk="lab"),)
PAIR = """\
name: intranet pair
guid: 0f6e3c4a-8a43-4c1e-9a0b-3f1d2e4c5b6a
when_changed: 2026-11-22T10:00:00Z
polling_interval: 30s
rules:
  - name: block telnet
    filter_list:
      name: telnet
      filters: [{source: me, destination: any, protocol: tcp, destination_port: 23}]
    filter_action: {name: block, action: block}
  - name: secure peer
    filter_list: {name: peer, filters: [{source: me, destination: 10.0.0.2}]}
    filter_action: {name: require, action: negotiate, security_methods: ["ESP[3DES,SHA1]"]}
    authentication: [{psk: lab}]
default_response_rule:
  authentication: [{psk: lab}]
"""


class Recorder:
    """Stands in for the driver or IKE: remembers what the agent handed it."""

    def __init__(self):
        self.loaded = []

    def load_policy(self, settings):
        self.loaded.append(settings)


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def node(tmp_path):
    store = LocalStore(tmp_path / "store")
    path = store.root / "pair.yaml"
    path.write_text(PAIR)
    store.assign(PolicyRef(str(path)))
    addresses = [IPv4Address("10.0.0.1")]
    driver, ike, clock = Recorder(), Recorder(), Clock()
    agent = PolicyAgent(store, driver, ike, lambda: addresses, clock=clock)
    return SimpleNamespace(store=store, path=path, addresses=addresses, driver=driver, ike=ike, clock=clock,
                           agent=agent)


def rules_in(spd_: spd.SPD) -> set[str]:
    return {f.rule for f in spd_.filters}


def test_apply_hands_filters_to_the_driver_and_settings_to_ike(node):
    change = node.agent.apply()
    (filters,), (settings,) = node.driver.loaded, node.ike.loaded
    assert rules_in(filters) == {"block telnet", "secure peer"} and len(filters) == 4
    # IKE hears of negotiate rules only, one IKE rule per mirrored pair, the default response last
    assert [(r.name, str(r.local), str(r.remote)) for r in settings] == [
        ("secure peer/1", "10.0.0.1/32", "10.0.0.2/32"),
        ("<Dynamic> default response", "0.0.0.0/0", "0.0.0.0/0")]
    assert settings[0].policy.quick_mode[0].encryption == "3des-cbc"
    assert settings[0].policy.auth[0].key == b"lab"
    peer_filter = next(f for f in filters.filters if f.rule == "secure peer")
    assert node.agent.ike_rule_for(peer_filter) is settings[0]
    assert change.added_rules == {"block telnet", "secure peer", "<Dynamic> default response"}
    assert node.agent.events[-1].kind == "policy-applied"
    assert "intranet pair {0f6e3c4a-8a43-4c1e-9a0b-3f1d2e4c5b6a}" in node.agent.events[-1].message


def test_a_bad_policy_is_refused_and_the_old_one_stays(node):
    node.agent.apply()
    node.path.write_text(PAIR.replace("destination: 10.0.0.2", "destination: my ip"))
    with pytest.raises(PolicyError, match=r"pair\.yaml:12: rules\[1\]\.filter_list\.filters\[0\]\.dest"):
        node.agent.refresh()
    assert len(node.driver.loaded) == 1 and node.agent.applied.policy.name == "intranet pair"
    event = node.agent.events[-1]
    assert event.kind == "policy-refused" and "keeping 'intranet pair' in force" in event.message
    assert "'my ip' is not an address" in event.message


def test_the_refusal_names_every_problem_of_the_file(node):
    node.agent.apply()
    node.path.write_text(PAIR.replace("destination: 10.0.0.2", "destination: my ip")
                         .replace("action: block}", "action: blok}")
                         .replace('"ESP[3DES,SHA1]"', '"ESP[3DES,SHA1]:1000k/60s"'))
    with pytest.raises(PolicyError) as refused:
        node.agent.refresh()
    assert [(p.source.rsplit(":", 1)[1], p.path) for p in refused.value.problems] == [
        ("10", "rules[0].filter_action.action"), ("12", "rules[1].filter_list.filters[0].destination"),
        ("13", "rules[1].filter_action.security_methods[0]"),
        ("13", "rules[1].filter_action.security_methods[0]")]
    message = node.agent.events[-1].message
    assert "(did you mean 'block'?)" in message and "60 s is outside" in message
    assert "1000 KB is outside" in message


def test_polling_applies_only_what_changed(node):
    node.agent.apply()
    assert node.agent.seconds_until_poll() == 30  # the policy's own polling interval
    assert node.agent.poll() is None and len(node.driver.loaded) == 1  # nothing moved
    node.path.write_text(PAIR.replace('"ESP[3DES,SHA1]"', '"ESP[DES,MD5]"'))
    change = node.agent.poll()
    assert change.touched_rules == {"secure peer"}  # its SAs go; block telnet and the response rule stay
    assert change.touched_filters == {"secure peer/1"}
    peer = next(f for f in node.driver.loaded[-1].filters if f.rule == "secure peer")
    assert peer.action.security_methods[0].esp_encryption == "des-cbc"


def test_polling_does_not_retry_a_refused_file_until_it_changes(node):
    node.agent.apply()
    node.path.write_text(PAIR.replace("action: block}", "action: deny}"))
    assert node.agent.poll() is None and node.agent.poll() is None
    assert [e.kind for e in node.agent.events].count("policy-refused") == 1
    node.path.write_text(PAIR.replace("destination_port: 23", "destination_port: 2323"))
    assert node.agent.poll().touched_rules == {"block telnet"}


def test_refresh_rereads_even_when_nothing_changed(node):
    node.agent.apply()
    change = node.agent.refresh()
    assert len(node.driver.loaded) == 2 and not change.touched_rules and not change.added_rules


def test_new_addresses_re_expand_my_ip_address(node):
    node.agent.apply()
    node.addresses.append(IPv4Address("172.16.0.1"))
    change = node.agent.poll()
    assert {str(f.src) for f in node.driver.loaded[-1].filters if f.direction is spd.Direction.OUTBOUND} == {
        "10.0.0.1/32", "172.16.0.1/32"}
    assert change.touched_rules == {"block telnet", "secure peer"}
    assert node.agent.events[-1].kind == "addresses-changed"


def test_assigning_another_policy_and_unassigning(node):
    node.agent.apply()
    node.store.assign(node.store.save(predefined("secure server", authentication=PSK)))
    change = node.agent.poll()
    assert [r.name for r in node.ike.loaded[-1]] == ["All IP Traffic/all ip", "<Dynamic> default response"]
    # same authentication and offers: SAs made by the default response rule survive the switch
    assert change.touched_rules == {"block telnet", "secure peer"}
    assert change.added_rules == {"All IP Traffic", "All ICMP Traffic"}
    node.store.assign(None)
    node.agent.poll()
    assert len(node.driver.loaded[-1]) == 0 and node.ike.loaded[-1] == []
    assert node.agent.events[-1].kind == "policy-unassigned" and node.agent.applied is None


def test_unchanged_rules_keep_their_sas_when_the_policy_is_replaced(node):
    node.agent.apply()
    web = ("  - name: web\n    filter_list: {name: web, filters: [{source: me, destination: 10.0.0.3}]}\n"
           "    filter_action: {name: permit, action: permit}\n")
    node.path.write_text(PAIR.replace("default_response_rule:", web + "default_response_rule:"))
    change = node.agent.poll()
    assert change.touched_rules == set() and change.added_rules == {"web"}


def test_a_name_that_will_not_resolve_keeps_the_old_policy(tmp_path):
    store = LocalStore(tmp_path)
    path = store.root / "p.yaml"
    path.write_text(PAIR)
    store.assign(PolicyRef(str(path)))
    driver = Recorder()

    def resolve(name):
        if name != "peer.lab":
            raise ValueError(f"cannot resolve {name!r}")
        return [IPv4Address("10.0.0.2")]

    agent = PolicyAgent(store, driver, Recorder(), lambda: [IPv4Address("10.0.0.1")], resolve=resolve)
    path.write_text(PAIR.replace("destination: 10.0.0.2", "destination: peer.lab"))
    agent.apply()
    assert {str(f.dst) for f in driver.loaded[0].filters if f.rule == "secure peer"} == {"10.0.0.2/32",
                                                                                         "10.0.0.1/32"}
    path.write_text(PAIR.replace("destination: 10.0.0.2", "destination: gone.lab"))
    with pytest.raises(PolicyError, match=r"rules\[1\]\.filter_list\.filters\[0\]\.destination"):
        agent.refresh()
    assert len(driver.loaded) == 1


def test_an_unreachable_store_keeps_the_policy_in_force(node):
    node.agent.apply()

    def down():
        raise StoreUnavailable("dc.lab.test:636 did not answer")

    node.store.assigned_policy = down
    assert node.agent.poll() is None and node.agent.applied.policy.name == "intranet pair"
    assert str(node.agent.events[-1]).endswith(
        "store-unavailable: dc.lab.test:636 did not answer; keeping 'intranet pair' in force")


def test_export_then_import_on_another_node_keeps_guid_and_change_stamp(node, tmp_path):
    node.agent.apply()
    exported = tmp_path / "pair-export.yaml"
    original = node.agent.export(exported)

    other = LocalStore(tmp_path / "other")
    other_driver = Recorder()
    other_agent = PolicyAgent(other, other_driver, Recorder(), lambda: [IPv4Address("10.0.0.2")])
    ref = other_agent.import_(exported, assign=True)
    other_agent.apply()
    imported = other_agent.applied.policy
    assert imported == original
    assert (imported.guid, imported.when_changed) == (original.guid, original.when_changed)
    assert imported.rules[1].filter_action.guid == original.rules[1].filter_action.guid

    # a modified re-export maps back onto the same stored policy: replaced, not added
    changed = dataclasses.replace(original, when_changed=original.when_changed + 0x1452,
                                  polling_interval=60)
    policyfile.save(changed, exported)
    assert other_agent.import_(exported) == ref and len(other.list()) == 1
    other_agent.poll()
    assert other_agent.applied.policy.when_changed == original.when_changed + 0x1452
    assert other_agent.applied.policy.polling_interval == 60


def test_import_refuses_a_bad_file_and_stores_nothing(node, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(PAIR.replace("action: block}", "action: deny}"))
    with pytest.raises(PolicyError, match=r"bad\.yaml:10:"):
        node.agent.import_(bad)
    assert [Path(ref.location).name for ref, _ in node.store.list()] == ["pair.yaml"]


def test_what_ike_cannot_use_is_skipped_with_a_warning(node):
    node.path.write_text(PAIR.replace("[{psk: lab}]\ndefault", "[kerberos]\ndefault")
                         .replace('"ESP[3DES,SHA1]"', '"ESP[3DES,SHA1]", "AH[SHA1]+ESP[3DES,SHA1]"'))
    node.agent.apply()
    assert [r.name for r in node.ike.loaded[-1]] == ["<Dynamic> default response"]
    warnings = [e.message for e in node.agent.events if e.kind == "policy-warning"]
    assert warnings == [
        "rule 'secure peer': authentication by kerberos skipped (no ike.kerberos (keytab, principal) in the "
        "node configuration: not a domain member)",
        "rule 'secure peer': no authentication method IKE can use; its traffic cannot be secured"]
    node.path.write_text(PAIR.replace('"ESP[3DES,SHA1]"', '"AH[SHA1]+ESP[3DES,SHA1]"'))
    node.agent.poll()  # an AH+ESP bundle is one quick mode proposal
    assert node.agent.events[-1].kind == "policy-applied"
    assert [o.describe() for o in node.ike.loaded[-1][0].policy.quick_mode] == ["AH[SHA1]+ESP[3DES,SHA1]"]


def test_views_for_ipsecctl(node):
    node.agent.apply()
    shown = node.agent.show_policy()
    assert shown["name"] == "intranet pair" and shown["location"] == str(node.path)
    assert shown["rules"][1]["authentication"] == [{"psk": "********"}]
    generic = node.agent.generic_filters()
    assert [(g["rule"], g["source"], g["destination"]) for g in generic] == [
        ("block telnet", "me", "any"), ("secure peer", "me", "10.0.0.2")]
    specific = node.agent.specific_filters()
    assert specific[0]["text"] == "secure peer/1: outbound 10.0.0.1/32 -> 10.0.0.2/32 any => negotiate"
    assert [e["kind"] for e in node.agent.event_log()] == ["policy-applied"]


def test_control_commands_answer_in_json(node, tmp_path):
    commands = node.agent.handlers()
    node.agent.apply()
    assert json.loads(json.dumps(commands["policy"]()))["guid"] == "0f6e3c4a-8a43-4c1e-9a0b-3f1d2e4c5b6a"
    assert commands["policy_filters"](kind="generic")[0]["source"] == "me"
    assert commands["policy_filters"]()[0]["direction"] == "outbound"
    with pytest.raises(ValueError, match="generic or specific"):
        commands["policy_filters"](kind="dynamic")
    # the commands that read the store answer as coroutines (the store's I/O in the agent's reader thread)
    assert asyncio.run(commands["refresh"]()) == {"policy": "intranet pair", "change": {
        "touched_rules": [], "touched_filters": [], "added_rules": [], "main_mode_changed": False,
        "reauthenticate": [], "text": "no SA touched"}}
    out = tmp_path / "x.yaml"
    assert asyncio.run(commands["export"](path=str(out)))["guid"] == "0f6e3c4a-8a43-4c1e-9a0b-3f1d2e4c5b6a"
    assert commands["import"](path=str(out))["location"] == str(node.path)  # same GUID: same stored file
    assert asyncio.run(commands["policies"]()) == [{"location": str(node.path), "name": "intranet pair",
                                       "guid": "0f6e3c4a-8a43-4c1e-9a0b-3f1d2e4c5b6a",
                                       "when_changed": "2026-11-22T10:00:00Z", "assigned": True}]
    assert [e["kind"] for e in commands["policy_events"]()][-2:] == ["policy-exported", "policy-imported"]
    json.dumps(commands["policy_events"]())


def test_interface_manager_reads_this_hosts_addresses():
    mine = interface_manager.addresses(exclude=["lo"])
    assert mine and all(isinstance(a, IPv4Address) and not a.is_loopback for a in mine)
    everything = interface_manager.addresses()
    assert set(mine) <= set(everything) and not any(a.is_loopback for a in everything)  # host scope


def test_a_certificate_that_cannot_be_loaded_is_a_warning(node):
    both = "[{certificate: CN=Lab CA}, {psk: lab}]\ndefault"
    node.path.write_text(PAIR.replace("[{psk: lab}]\ndefault", both))

    def certificate_for(ca):
        raise FileNotFoundError(f"no certificate issued by {ca} in /etc/ipsecd/certs")

    node.agent.certificate_for = certificate_for
    node.agent.apply()
    assert node.ike.loaded[-1][0].policy.auth[0].key == b"lab"  # the pre-shared key still works
    assert node.agent.events[-1].message == (
        "rule 'secure peer': authentication by certificate (CA CN=Lab CA) "
        "skipped (no certificate issued by CN=Lab CA in /etc/ipsecd/certs)")


def test_run_applies_then_polls_at_the_policy_interval(node):
    node.path.write_text(PAIR.replace("polling_interval: 30s", "polling_interval: 1s"))
    agent = PolicyAgent(node.store, node.driver, node.ike, lambda: node.addresses)  # real time

    async def scenario():
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: len(node.driver.loaded) == 1)
            node.path.write_text(PAIR.replace("polling_interval: 30s", "polling_interval: 1s")
                                 .replace("destination_port: 23", "destination_port: 2323"))
            await wait_for(lambda: len(node.driver.loaded) == 2)
        finally:
            task.cancel()

    async def wait_for(condition, timeout=10.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "the agent did not poll in time"
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert agent.events[-1].message.endswith("SAs of block telnet deleted")


def test_a_file_that_is_not_utf8_is_refused_and_polling_goes_on(node):
    """It stopped the agent's polling for good (only PolicyError was caught) and ended ipsecd at start."""
    node.agent.apply()
    node.path.write_bytes(PAIR.encode().replace(b"name: block telnet", b"name: block \xff telnet"))
    node.clock.now += 60
    assert node.agent.poll() is None and node.agent.applied.policy.name == "intranet pair"
    event = node.agent.events[-1]
    assert event.kind == "policy-refused"
    assert "pair.yaml:6: not UTF-8 text: byte 0xff at column 17" in event.message
    node.path.write_text(PAIR.replace("destination_port: 23", "destination_port: 2323"))
    node.clock.now += 60
    assert node.agent.poll().touched_rules == {"block telnet"}


def test_a_change_stamp_past_year_9999_is_refused_and_polling_goes_on(node):
    node.agent.apply()
    node.path.write_text(PAIR.replace("when_changed: 2026-11-22T10:00:00Z", "when_changed: 99999999999999"))
    node.clock.now += 60
    assert node.agent.poll() is None and node.agent.applied.policy.when_changed < 2**32
    assert node.agent.events[-1].kind == "policy-refused"


def test_a_new_pre_shared_key_invalidates_the_main_mode_sas_of_its_rules(node):
    node.agent.apply()
    node.path.write_text(PAIR.replace('"ESP[3DES,SHA1]"', '"ESP[DES,MD5]"'))
    assert node.agent.refresh().reauthenticate == frozenset()  # another quick mode offer: main modes stay
    node.path.write_text(PAIR.replace('"ESP[3DES,SHA1]"', '"ESP[DES,MD5]"')
                         .replace("    authentication: [{psk: lab}]", "    authentication: [{psk: new}]"))
    change = node.agent.refresh()
    assert change.reauthenticate == {"secure peer/1"}  # the IKE rule (filter) names main modes carry
    assert "main mode SAs of secure peer/1 deleted (authentication changed)" in change.describe()
    node.path.write_text("name: empty\n")
    assert node.agent.refresh().reauthenticate == {"secure peer/1", "<Dynamic> default response"}


class GroupPolicyLocalStore(LocalStore):
    """A local store that behaves as a directory store towards the agent (refresh, Group Policy, status)."""

    def __init__(self, root, clock):
        super().__init__(root)
        self.clock, self.refreshed, self.resolved_at = clock, 0, clock()
        self.status = SimpleNamespace(to_dict=lambda: {"source": "directory", "ipsec_id": "{X}"})

    def refresh(self):
        self.refreshed += 1

    def seconds_until_group_policy(self):
        return max(0.0, self.resolved_at + 10 - self.clock())

    def save(self, policy):
        raise PermissionError("a member cannot write to the directory: use ipsecctl static import")


def test_with_a_directory_store_refresh_is_gpupdate_and_group_policy_bounds_the_poll(tmp_path, node):
    store = GroupPolicyLocalStore(tmp_path / "gp", node.clock)
    (store.root / "pair.yaml").write_text(PAIR)
    store.assign(PolicyRef(str(store.root / "pair.yaml")))
    agent = PolicyAgent(store, node.driver, node.ike, lambda: node.addresses, clock=node.clock)
    agent.refresh()
    assert store.refreshed == 1
    assert agent.seconds_until_poll() == 10  # the policy polls every 30 s: the Group Policy comes first
    node.clock.now += 11
    assert agent.seconds_until_poll() == 0
    shown = agent.show_policy()
    assert shown["source"] == {"source": "directory", "ipsec_id": "{X}"} and shown["name"]
    (tmp_path / "export.yaml").write_text(PAIR)
    with pytest.raises(PermissionError, match="ipsecctl static import"):
        agent.import_(tmp_path / "export.yaml")


class SilentStore(LocalStore):
    """A store whose reads wait like a DC that does not answer (until `answer` is set): where it stands in
    the read, `waiting` says."""

    def __init__(self, root):
        super().__init__(root)
        self.waiting, self.answer = threading.Event(), threading.Event()

    def assigned_policy(self):
        self.waiting.set()
        assert self.answer.wait(20), "the test never let the store answer"
        return super().assigned_policy()


def silent_agent(node) -> tuple[PolicyAgent, SilentStore]:
    store = SilentStore(node.store.root)
    return PolicyAgent(store, node.driver, node.ike, lambda: node.addresses, clock=node.clock), store


async def until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


def refresh_while_waiting(agent, node, tmp_path, waiting: threading.Event, answer: threading.Event) -> dict:
    """`ipsecctl refresh` through the control socket while the agent's read waits (on a DC, on DNS) until
    `answer`: the loop must answer `ipsecctl events` meanwhile. The refresh's own answer."""
    socket_path = str(tmp_path / "ipsecd.sock")

    async def scenario():
        server = await control.serve(socket_path, agent.handlers())
        try:
            refresh = asyncio.create_task(asyncio.to_thread(control.request, socket_path, "refresh"))
            await until(waiting.is_set, "the refresh never reached the store or the resolver")
            shown = await asyncio.to_thread(control.request, socket_path, "policy_events", timeout=2)
            assert shown == [] and not refresh.done() and node.driver.loaded == []  # the loop answered
            answer.set()
            return await refresh
        finally:
            server.close()

    return asyncio.run(scenario())


def test_a_store_waiting_on_its_dc_does_not_stall_the_loop_and_its_answer_is_applied_there(node, tmp_path):
    """ipsecd's one loop runs IKE, the driver and the control socket: a read of the store that waits on a
    silent DC (seconds per attempt) ran in it and stalled them all. The read runs in the agent's reader
    thread; the loop answers ipsecctl meanwhile, and applies the policy when the store answers."""
    agent, store = silent_agent(node)
    answer = refresh_while_waiting(agent, node, tmp_path, store.waiting, store.answer)
    assert answer["policy"] == "intranet pair" and len(node.driver.loaded) == 1
    assert agent.event_list()[-1].kind == "policy-applied"


class SilentDNS:
    """A resolver whose DNS server does not answer until `answer` is set: like getaddrinfo, it gives up
    after its timeout (10 s) with ValueError. `asked`: the names looked up."""

    def __init__(self):
        self.waiting, self.answer, self.asked = threading.Event(), threading.Event(), []

    def __call__(self, name):
        self.asked.append(name)
        self.waiting.set()
        if not self.answer.wait(10):
            raise ValueError(f"cannot resolve {name!r}: Temporary failure in name resolution")
        return [IPv4Address("10.0.0.2")]


def test_a_refresh_waiting_on_dns_does_not_stall_the_loop_and_its_answer_is_applied_there(node, tmp_path):
    """A policy naming a host by DNS name was expanded on the loop, resolver and all: a DNS server that does
    not answer stalled IKE, the driver and ipsecctl for the resolver's timeout on every apply. The names are
    looked up with the read, in the reader thread; the loop answers ipsecctl meanwhile."""
    node.path.write_text(PAIR.replace("destination: 10.0.0.2", "destination: peer.lab"))
    dns = SilentDNS()
    agent = PolicyAgent(node.store, node.driver, node.ike, lambda: node.addresses, clock=node.clock,
                        resolve=dns)
    answer = refresh_while_waiting(agent, node, tmp_path, dns.waiting, dns.answer)
    assert answer["policy"] == "intranet pair" and dns.asked == ["peer.lab"]
    assert {str(f.dst) for f in node.driver.loaded[-1].filters if f.rule == "secure peer"} == {
        "10.0.0.2/32", "10.0.0.1/32"}


def test_names_are_resolved_when_the_policy_is_read_and_an_address_change_reuses_the_answers(node):
    """Windows resolves a filter's DNS name when it applies the policy: a refresh asks again, while a new
    address of this node re-expands "my IP address" with the names' answers in force (no lookup)."""
    node.path.write_text(PAIR.replace("destination: 10.0.0.2", "destination: peer.lab"))
    dns = SilentDNS()
    dns.answer.set()
    agent = PolicyAgent(node.store, node.driver, node.ike, lambda: node.addresses, clock=node.clock,
                        resolve=dns)
    agent.apply()
    node.addresses.append(IPv4Address("172.16.0.1"))
    assert agent.poll() is not None and agent.event_list()[-1].kind == "addresses-changed"
    assert {str(f.src) for f in node.driver.loaded[-1].filters if f.dst == IPv4Network("10.0.0.2/32")} == {
        "10.0.0.1/32", "172.16.0.1/32"}
    assert dns.asked == ["peer.lab"]
    agent.refresh()
    assert dns.asked == ["peer.lab"] * 2


def test_a_read_past_the_bound_keeps_the_policy_in_force_and_the_next_look_waits_for_it(node, monkeypatch):
    monkeypatch.setattr(agent_module, "READ_TIMEOUT", 0.2)
    agent, store = silent_agent(node)
    reads = []
    store.waiting = SimpleNamespace(set=lambda: reads.append(1))  # counts the reads that reach the store

    async def scenario():
        assert await agent.look() is None  # the read waits past the bound
        assert await agent.look() is None  # and is still waiting: no second read piles up behind it
        assert len(reads) == 1
        store.answer.set()
        return await agent.look(force=True)  # waits for the first read, then reads again

    change = asyncio.run(scenario())
    assert change is not None and "secure peer" in change.added_rules and len(reads) == 2
    said = [e.message for e in agent.event_list()]
    assert said[:2] == ["the policy store did not answer in 0.2 s; keeping no policy in force"] * 2
    assert said[2].startswith("intranet pair {0f6e3c4a")


def test_a_defect_in_one_look_is_an_event_and_polling_goes_on(node, monkeypatch):
    """An exception other than a refusal or an unreachable store (a defect in a store read, in `act`) ended
    the polling task for good: later changes were never applied."""
    node.path.write_text(PAIR.replace("polling_interval: 30s", "polling_interval: 1s"))
    agent = PolicyAgent(node.store, node.driver, node.ike, lambda: node.addresses)  # real time
    assigned = node.store.assigned_policy
    failures = iter([RuntimeError("a defect in the store")])

    def assigned_once_broken():
        failure = next(failures, None)
        if failure:
            raise failure
        return assigned()

    async def scenario():
        await agent.look(force=True)
        monkeypatch.setattr(node.store, "assigned_policy", assigned_once_broken)
        node.path.write_text(PAIR.replace("polling_interval: 30s", "polling_interval: 1s")
                             .replace("destination_port: 23", "destination_port: 2323"))
        task = asyncio.create_task(agent.run())
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while len(node.driver.loaded) < 2:
                assert not task.done(), f"polling ended: {task.exception()!r}"
                assert asyncio.get_running_loop().time() < deadline, "the change was never applied"
                await asyncio.sleep(0.05)
        finally:
            task.cancel()

    asyncio.run(scenario())
    errors = [e for e in agent.events if e.kind == "internal-error"]
    assert len(errors) == 1 and "RuntimeError: a defect in the store" in errors[0].message
    assert "intranet pair" in errors[0].message  # what stays in force
