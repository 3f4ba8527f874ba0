"""Teardown leaves no container, network namespace, veth or bridge behind, even after a crash half-way."""

import docker
from pyroute2 import IPRoute, netns

from lab import topology
from lab.docker_backend import Lab, fabric_name


def _host_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_down_removes_everything(lab_backend, tmp_path):
    links_before = _host_links()
    networks_before = {n.id for n in docker.from_env().networks.list()}
    lab = lab_backend.up(topology.load("gateway-tunnel"), "t-teardown", tmp_path)
    assert len(lab_backend.containers("t-teardown")) == 4
    assert _host_links() == links_before, "lab veths must never appear in the host namespace"
    lab.down()
    assert lab_backend.containers("t-teardown") == []
    assert fabric_name("t-teardown") not in netns.listnetns()
    assert {n.id for n in docker.from_env().networks.list()} == networks_before
    assert lab_backend.down("t-teardown") == []  # idempotent


def test_down_after_a_crash_half_way(lab_backend, tmp_path):
    topo = topology.load("nat-t")
    lab = Lab("t-crashed", topo, tmp_path, lab_backend)
    tag = lab_backend.images.ensure("node")
    lab_backend._make_fabric(lab)  # the crash: fabric made, one container started, nothing wired
    lab_backend._start_container(lab, topo.node("client"), tag)
    removed = lab_backend.down("t-crashed")
    assert removed == ["t-crashed-client", "netns ilab-t-crashed"]
    assert lab_backend.containers("t-crashed") == []
    assert "t-crashed" not in lab_backend.labs()
