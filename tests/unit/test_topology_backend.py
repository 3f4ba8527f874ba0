"""The backend seam: DockerBackend is a Backend; what a node runs comes from images/<kind>/image.yaml,
read and checked with errors that name file, line and field."""

import inspect
from pathlib import Path

import pytest

from lab import images, services
from lab.backend import Backend, LabError
from lab.docker_backend import DockerBackend


def _protocol_members() -> list[str]:
    return [name for name, value in vars(Backend).items() if not name.startswith("_") and callable(value)]


def test_docker_backend_has_every_member_of_the_protocol_with_its_parameters():
    members = _protocol_members()
    assert {"up", "down", "status", "labs", "exec", "spawn", "put_file", "get_file", "capture"} <= set(
        members
    )
    assert {"restart", "set_link", "capture_segment", "attach"} <= set(members)
    for name in members:
        wanted = list(inspect.signature(getattr(Backend, name)).parameters)
        assert hasattr(DockerBackend, name), f"DockerBackend lacks {name}"
        assert list(inspect.signature(getattr(DockerBackend, name)).parameters) == wanted, name


def test_shipped_images_declare_their_services():
    node = services.load("node")
    ipsecd = node.service("ipsecd")
    assert (ipsecd.start, ipsecd.file, ipsecd.log) == (
        "with-file",
        "/etc/ipsecd/ipsecd.yaml",
        "/var/log/ipsecd.log",
    )
    assert ipsecd.command == ("ipsecd", "--config", "/etc/ipsecd/ipsecd.yaml")
    assert [r.argv for r in ipsecd.ready] == [("test", "-S", "/run/ipsecd.sock")]
    assert node.at_up({}) == [] and node.at_up({"ipsecd": Path("a.yaml")}) == [ipsecd]
    assert node.log_files() == ["/var/log/ipsecd.log", "/var/log/lab/*.log"]
    charon = services.load("strongswan").service("charon")
    assert charon.start == "on-demand" and charon.timeout == 10
    assert [r.argv for r in charon.ready] == [("swanctl", "--stats")]
    assert services.load("strongswan").at_up({}) == []


def test_an_image_without_image_yaml_runs_nothing_and_says_so_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "IMAGES_DIR", tmp_path)
    bare = services.load("bare")
    assert bare.services == {} and bare.at_up({"ipsecd": Path("x.yaml")}) == []
    with pytest.raises(
        LabError, match=r"image bare has no service 'ipsecd' \(.*bare/image.yaml declares: none\)"
    ):
        bare.service("ipsecd")


def test_a_domain_controller_fits_tcp_and_command_readiness_all_of_which_must_hold():
    dc = services.loads(
        "services:\n"
        "  samba:\n"
        "    start: up\n"
        "    command: [samba, -M, single, -i]\n"
        "    ready: [{tcp: 389}, {tcp: 88}, {command: [smbclient, -N, -L, localhost]}]\n"
        "    timeout: 60\n"
        "    log: /var/log/samba.log\n"
        "    logs: [/var/log/samba/log.samba]\n",
        "images/dc/image.yaml",
        "dc",
    )
    samba = dc.service("samba")
    assert dc.at_up({}) == [samba] and samba.timeout == 60
    assert samba.ready[0].argv == ("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/389")
    assert [r.what for r in samba.ready][1:] == [
        "TCP port 88 answers",
        "`smbclient -N -L localhost` succeeds",
    ]
    assert dc.log_files() == ["/var/log/samba.log", "/var/log/samba/log.samba", "/var/log/lab/*.log"]


GOOD = """\
services:
  d:
    start: with-file
    file: /etc/d.conf
    command: [d]
    ready: [{socket: /run/d.sock}]
    log: /var/log/d.log
"""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (GOOD.replace("    file: /etc/d.conf\n", ""), "x.yaml:3: services.d.start: with-file needs `file`"),
        (GOOD.replace("    log: /var/log/d.log\n", ""), "x.yaml:2: services.d: 'log' is required"),
        (
            GOOD.replace("socket: /run/d.sock", "udp: 53"),
            "x.yaml:6: services.d.ready[0].udp: unknown field 'udp'",
        ),
        (GOOD.replace("command: [d]", "command: []"), "x.yaml:5: services.d.command: [] should be non-empty"),
        (
            GOOD.replace("file: /etc/d.conf", "file: etc/d.conf"),
            "x.yaml:4: services.d.file: 'etc/d.conf' is not valid",
        ),
        (GOOD + "    colour: red\n", "x.yaml:8: services.d.colour: unknown field 'colour'"),
        (GOOD + "    log: /l\n", "x.yaml:8: services.d.log: duplicate key"),
        ("services: [\n", "x.yaml:2: not valid YAML"),
        ("", "x.yaml:1: the file is empty"),
    ],
)
def test_bad_image_yaml_is_refused_naming_file_line_and_field(text, problem):
    with pytest.raises(services.ImageServicesError) as caught:
        services.loads(text, "x.yaml", "k")
    assert caught.value.problems[0].startswith(problem), caught.value.problems
