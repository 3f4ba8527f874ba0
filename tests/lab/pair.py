"""intranet-pair without the ipsecd its topology starts on both hosts (topologies/intranet-pair.yaml): for
tests that want the hosts in clear, or start ipsecd themselves with a scenario's configuration."""

BARE_PAIR = {"nodes": {"host-a": {"ipsecd": None}, "host-b": {"ipsecd": None}}}
