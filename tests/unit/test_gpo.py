"""Group Policy precedence the Windows way (ipsecd/policy/gpo.py): OU over domain, link order, block
inheritance, enforced links, disabled links; and which GPO's IPsec policy a computer runs."""

import pytest

from ipsecd.policy.directory_model import DirectoryError
from ipsecd.policy.gpo import (
    Container,
    GPLink,
    assigned,
    format_gplink,
    gpo_dn,
    ipsec_pointer_dn,
    parse_gplink,
    precedence,
    scopes,
)

DOMAIN = "DC=lab,DC=test"
SERVERS = f"OU=Servers,{DOMAIN}"
WEB = f"OU=Web,{SERVERS}"


def gpo(name: str) -> str:
    return gpo_dn("{" + name + "}", DOMAIN)


def links(*spec: str) -> tuple[GPLink, ...]:
    """'A' a plain link, 'A!' enforced, 'A-' disabled; in gPLink order (lowest precedence first)."""
    return tuple(GPLink(gpo(s.rstrip("!-")), (2 if s.endswith("!") else 0) | (1 if s.endswith("-") else 0))
                 for s in spec)


def names(dns: list[str]) -> list[str]:
    return [dn.split(",")[0][4:-1] for dn in dns]


def test_gplink_round_trips_and_bad_text_names_the_container():
    text = f"[LDAP://cn={{A}},cn=policies,cn=system,{DOMAIN};0][LDAP://CN={{B}},CN=Policies,CN=System,{DOMAIN};2]"
    parsed = parse_gplink(text, SERVERS)
    assert [(link.gpo_dn.split(",")[0], link.enforced, link.disabled) for link in parsed] == [
        ("cn={A}", False, False), ("CN={B}", True, False)]
    assert format_gplink(parsed) == text
    assert parse_gplink("") == parse_gplink("  ") == ()
    with pytest.raises(DirectoryError) as bad:
        parse_gplink(text + "[LDAP://cn={C}]", SERVERS)
    assert (bad.value.dn, bad.value.field) == (SERVERS, "gPLink")
    with pytest.raises(DirectoryError, match="gPOptions"):
        Container.from_attributes(SERVERS, None, "yes")


def test_scopes_are_the_domain_then_each_ou_down_to_the_computer():
    assert scopes(f"CN=member-a,{WEB}", DOMAIN) == [DOMAIN, SERVERS, WEB]
    assert scopes(f"CN=member-c,CN=Computers,{DOMAIN}", DOMAIN) == [DOMAIN]
    with pytest.raises(DirectoryError, match="not in the domain"):
        scopes("CN=x,DC=other,DC=test", DOMAIN)


def test_ou_beats_domain_and_the_nearer_ou_beats_its_parent():
    chain = [Container(DOMAIN, links("D")), Container(SERVERS, links("S")), Container(WEB, links("W"))]
    assert names(precedence(chain)) == ["W", "S", "D"]


def test_link_order_within_a_container_the_last_gplink_entry_is_link_order_1():
    chain = [Container(DOMAIN, links("D")), Container(SERVERS, links("S3", "S2", "S1"))]
    assert names(precedence(chain)) == ["S1", "S2", "S3", "D"]


def test_block_inheritance_cuts_off_the_containers_above():
    chain = [Container(DOMAIN, links("D")), Container(SERVERS, links("S")),
             Container(WEB, links("W"), block_inheritance=True)]
    assert names(precedence(chain)) == ["W"]
    chain[1] = Container(SERVERS, links("S"), block_inheritance=True)
    chain[2] = Container(WEB, links("W"))
    assert names(precedence(chain)) == ["W", "S"]


def test_enforced_links_pass_a_block_and_beat_nearer_links_the_topmost_winning():
    chain = [Container(DOMAIN, links("D", "DE!")), Container(SERVERS, links("SE!", "S")),
             Container(WEB, links("W"), block_inheritance=True)]
    assert names(precedence(chain)) == ["DE", "SE", "W"]


def test_disabled_links_are_ignored_even_enforced_ones():
    chain = [Container(DOMAIN, links("D", "X-")), Container(SERVERS, links("S-", "E!-"))]
    assert names(precedence(chain)) == ["D"]


def test_a_site_applies_below_the_domain_and_a_gpo_linked_twice_counts_once():
    site = Container("CN=Default-First-Site-Name,CN=Sites,CN=Configuration,DC=lab,DC=test",
                     links("Site", "D"))
    chain = [Container(DOMAIN, links("D")), Container(SERVERS, links("S"))]
    assert names(precedence(chain, site)) == ["S", "D", "Site"]


def test_the_highest_precedence_gpo_with_an_ipsec_pointer_assigns_and_policies_never_merge():
    chain = [Container(DOMAIN, links("D")), Container(SERVERS, links("S1", "S2"))]
    pointers = {ipsec_pointer_dn(gpo("D")): "CN=ipsecPolicy{d},CN=IP Security,CN=System," + DOMAIN,
                ipsec_pointer_dn(gpo("S1")): "CN=ipsecPolicy{s1},CN=IP Security,CN=System," + DOMAIN}
    read: list[str] = []

    def pointer(dn: str) -> str | None:
        read.append(dn)
        return pointers.get(dn)

    found = assigned(precedence(chain), pointer)
    assert found is not None and found.policy_dn.startswith("CN=ipsecPolicy{s1}")  # S2 has no IPsec policy
    assert names([found.gpo_dn]) == ["S1"] and found.pointer_dn == ipsec_pointer_dn(gpo("S1"))
    assert len(read) == 2  # the domain's policy is never even read: no merge
    assert assigned(precedence([Container(DOMAIN, links("X"))]), pointer) is None
