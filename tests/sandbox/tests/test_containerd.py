"""A private containerd per sandbox node: starts inside the node's namespace with its CRI plugin
ready, runs the offline busybox image, and leaves nothing behind. Needs root."""

import os
import pathlib
import shutil

import pytest

from bnsandbox import containerd, images, netns

PREFIX = "bnt-sb-test-ctr-"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="containerd needs root"),
    pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd is not installed (scripts/setup.sh)"),
]


def test_node_containerd_runs_the_offline_image_in_the_node_and_cleans_up(tmp_path):
    archive = images.build_archive(tmp_path / "images.tar")
    with netns.Topology(["c1"], prefix=PREFIX) as topo:
        node = topo.nodes[0]
        ctr = containerd.Containerd(node, tmp_path / "c1")
        try:
            ctr.start()
            assert ctr.cri_ready()
            ctr.import_images(archive)
            tags = ctr.ctr("-n", "k8s.io", "images", "ls", "-q").stdout.split()
            assert {images.PAUSE_IMAGE, *images.BUSYBOX_TAGS} <= set(tags)
            # The host namespace's view shows containerd inside the node's network namespace.
            assert ctr.proc.pid in netns.netns_pids(node.netns)  # nsenter execs containerd: same pid
            res = ctr.ctr("-n", "k8s.io", "run", "--rm", "--net-host", images.BUSYBOX_TAGS[0], "probe",
                          "/bin/sh", "-c", "echo ok; ip -o -4 addr show eth0")
            assert res.stdout.splitlines()[0] == "ok"
            assert node.ip in res.stdout  # --net-host: the node's namespace, i.e. its eth0
        finally:
            ctr.stop()
        assert not (tmp_path / "c1" / "containerd").exists()
        assert containerd._mounts_under(tmp_path) == []
    shims = [p for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()
             and str(tmp_path).encode() in _cmdline(p)]
    assert shims == []


def _cmdline(p):
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""
