"""Teardown leaves no container, network namespace, veth or bridge behind, even after a crash half-way."""

import docker
from pyroute2 import IPRoute, netns

from lab import topology
from lab.fabric import Fabric
from lab.running import Lab


def _host_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_down_removes_everything(lab_backend, lab_name, tmp_path):
    name = lab_name("teardown")
    links_before = _host_links()
    networks_before = {n.id for n in docker.from_env().networks.list()}
    lab = lab_backend.up(topology.load("gateway-tunnel"), name, tmp_path)
    assert len(lab_backend.containers(name)) == 4
    assert _host_links() == links_before, "lab veths must never appear in the host namespace"
    lab.down()
    assert lab_backend.containers(name) == []
    assert Fabric(name).name not in netns.listnetns()
    assert {n.id for n in docker.from_env().networks.list()} == networks_before
    assert lab_backend.down(name) == []  # idempotent


def test_down_after_a_crash_half_way(lab_backend, lab_name, tmp_path):
    name = lab_name("crashed")
    topo = topology.load("nat-t")
    lab = Lab(name, topo, tmp_path, lab_backend)
    tag = lab_backend.images.ensure("node")
    Fabric(name).create(topo)  # the crash: fabric made, one container started, nothing wired
    lab_backend._start_container(lab, topo.node("client"), tag)
    removed = lab_backend.down(name)
    assert removed == [f"{name}-client", f"netns ilab-{name}"]
    assert lab_backend.containers(name) == []
    assert name not in lab_backend.labs()


def test_an_engine_that_does_not_answer_gives_a_named_error_and_leaves_nothing(
    lab_backend, lab_name, tmp_path, monkeypatch
):
    """The engine times out on one container of a star (as at 100 nodes on a busy machine): `up` says which
    and why, and removes every container it had made, the fabric namespace with its veths and bridge."""
    import pytest
    import requests

    from lab.backend import LabError

    name = lab_name("slow-engine")
    links_before = _host_links()
    start = lab_backend._start_container

    def engine_times_out_on_client_5(lab, spec, image):
        if spec.name == "client-5":
            raise requests.exceptions.ReadTimeout("Read timed out. (read timeout=180)")
        return start(lab, spec, image)

    monkeypatch.setattr(lab_backend, "_start_container", engine_times_out_on_client_5)
    with pytest.raises(LabError, match=rf"starting {name}-client-5: the Docker engine did not answer within"):
        lab_backend.up(topology.load("star", {"parameters": {"clients": 8}}), name, tmp_path)
    assert lab_backend.containers(name) == []
    assert Fabric(name).name not in netns.listnetns()
    assert _host_links() == links_before
