"""Images on the real engine: pruning removes what it should and nothing else."""

import uuid

import docker


def test_prune_removes_unused_node_level_tags_only(lab_backend):
    client = docker.from_env()
    base = client.images.get(lab_backend.images.ensure("base"))
    stale = f"ipsec-lab/prunetest:{uuid.uuid4().hex[:8]}"
    base.tag(stale)
    kept = f"ipsec-lab/prunetest:{uuid.uuid4().hex[:8]}"
    base.tag(kept)
    removed = lab_backend.images.prune(keep={kept}, older_than_hours=0, kinds={"prunetest", "base"})
    assert removed == [stale]
    client.images.remove(kept)
    assert base.tags and all(client.images.get(tag) for tag in base.tags)  # the base itself stays
