"""Image tags are hashes of their inputs: a change rebuilds exactly the images it feeds."""

import shutil
from pathlib import Path

import pytest

from lab import images


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    """A copy of the inputs (images/, ipsecd/, pyproject.toml) the tags are computed from."""
    for name in ("images", "ipsecd"):
        shutil.copytree(images.ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(images.ROOT / "pyproject.toml", tmp_path)
    monkeypatch.setattr(images, "ROOT", tmp_path)
    monkeypatch.setattr(images, "IMAGES_DIR", tmp_path / "images")
    monkeypatch.delenv("LAB_BASE", raising=False)
    return tmp_path


def tags() -> tuple[str, str]:
    built = images.Images(client=object(), log=lambda line: None)
    return built.tag("base"), built.tag("node")


def test_unchanged_inputs_give_the_same_tags(tree):
    base, node = tags()
    assert base.startswith("ipsec-lab/base:") and node.startswith("ipsec-lab/node:")
    assert tags() == (base, node)


def test_daemon_code_rebuilds_the_node_image_only(tree):
    base, node = tags()
    (tree / "ipsecd" / "new_module.py").write_text("X = 1\n")
    assert tags()[0] == base and tags()[1] != node


def test_a_package_added_by_any_image_rebuilds_the_base_and_so_the_node(tree):
    base, node = tags()
    (tree / "images" / "peer").mkdir()
    (tree / "images" / "peer" / "packages.txt").write_text("racoon  # another peer\n")
    assert "racoon" in images.base_packages()
    new_base, new_node = tags()
    assert new_base != base and new_node != node


def test_a_registry_base_is_another_base(tree, monkeypatch):
    base, _ = tags()
    monkeypatch.setenv("LAB_BASE", "debian:bookworm-slim")
    assert tags()[0] != base


def test_unknown_kind_is_named():
    with pytest.raises(images.ImageError, match=r"no image kind 'nope'.*known: .*node"):
        images.Images(client=object()).tag("nope")
