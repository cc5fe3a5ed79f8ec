"""Real Kubernetes components in the sandbox (`bnsandbox.realk8s`), without running them: what is
refused, the kubelet's configuration, the controller list, and the host state kubelets change
(kernel tunables, their dirs) restored by the last sandbox out and after a killed run."""

import os
import pathlib

import pytest
import yaml

from bnsandbox import realk8s, up
from bnsandbox.realk8s import RealComponentError, RealComponents


def executable(path: pathlib.Path, text: str = "#!/bin/sh\n") -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_components_come_from_the_environment():
    env = {"SANDBOX_REAL_KUBELET": "/k/kubelet", "SANDBOX_REAL_SCHEDULER": "", "OTHER": "x"}
    real = RealComponents.from_env(env)
    assert real == RealComponents(kubelet="/k/kubelet")
    assert real and not RealComponents.from_env({})
    assert real.describe() == "SANDBOX_REAL_KUBELET=/k/kubelet"


def test_real_components_are_refused_without_an_existing_api_server(tmp_path):
    kubelet = executable(tmp_path / "kubelet")
    with pytest.raises(RealComponentError, match="SANDBOX_REAL_KUBELET=.*need an existing API server"):
        RealComponents(kubelet=kubelet).check(existing_api_server=False)
    RealComponents(kubelet=kubelet).check(existing_api_server=True)
    RealComponents().check(existing_api_server=False)
    # Refused by the sandbox itself before it starts anything (no root, no namespaces needed).
    with pytest.raises(RealComponentError, match="existing API server"):
        up.Sandbox(2, tmp_path / "state", real=RealComponents(scheduler=kubelet))
    assert not (tmp_path / "state").exists()


def test_real_components_must_be_executables_and_a_kubelet_needs_the_runtime(tmp_path):
    (tmp_path / "plain").write_text("")
    with pytest.raises(RealComponentError, match="SANDBOX_REAL_SCHEDULER=.*not an executable file"):
        RealComponents(scheduler=str(tmp_path / "plain")).check(existing_api_server=True)
    with pytest.raises(RealComponentError, match="SANDBOX_REAL_CONTROLLER_MANAGER=.*not an executable"):
        RealComponents(controller_manager=str(tmp_path / "missing")).check(existing_api_server=True)
    with pytest.raises(RealComponentError, match="--no-runtime"):
        RealComponents(kubelet=executable(tmp_path / "kubelet")).check(existing_api_server=True, runtime=False)


def test_kubelet_configuration_for_a_sandbox_node(tmp_path):
    cfg = realk8s.kubelet_config("10.251.0.11", "unix:///run/x/containerd.sock", tmp_path / "root", tmp_path / "pods")
    assert cfg["kind"] == "KubeletConfiguration"
    # Two kubelets share the host's cgroups: neither may manage (and collect) pod cgroups.
    assert cfg["cgroupsPerQOS"] is False and cfg["enforceNodeAllocatable"] == []
    assert (cfg["cgroupDriver"], cfg["failCgroupV1"], cfg["failSwapOn"], cfg["oomScoreAdj"]) == ("cgroupfs", False,
                                                                                                 False, 0)
    assert cfg["containerRuntimeEndpoint"] == "unix:///run/x/containerd.sock"
    assert cfg["address"] == "10.251.0.11" and cfg["authorization"] == {"mode": "AlwaysAllow"}
    assert cfg["authentication"]["webhook"] == {"enabled": False}
    assert (cfg["imageGCHighThresholdPercent"], cfg["imageGCLowThresholdPercent"]) == (100, 99)
    assert cfg["clusterDNS"]
    assert "protectKernelDefaults" not in cfg, "the kubelet would refuse to start on the host's tunables"
    # Every path it writes is under the node's state (/var/log/containers is fixed in the kubelet).
    for key in ("podLogsDir", "volumePluginDir"):
        assert cfg[key].startswith(str(tmp_path) + "/"), key
    # The YAML the kubelet reads keeps the empty list (an absent one defaults to ["pods"]).
    assert yaml.safe_load(yaml.safe_dump(cfg))["enforceNodeAllocatable"] == []


def test_controllers_follow_the_binary_and_the_nodes(tmp_path):
    upstream = executable(tmp_path / "kcm", "#!/bin/sh\necho 'All controllers: namespace-controller'\n")
    fork = executable(tmp_path / "kcm-os",
                      "#!/bin/sh\necho 'All controllers: service-ca-certificate-publisher-controller'\n")
    base = realk8s.controllers(upstream, real_kubelets=False, token_controller=False)
    assert {"namespace", "garbagecollector", "serviceaccount", "podgc", "root-ca-cert-publisher"} <= set(base)
    assert "nodelifecycle" not in base and "serviceaccount-token" not in base
    assert "nodelifecycle" in realk8s.controllers(upstream, real_kubelets=True, token_controller=False)
    assert "serviceaccount-token" in realk8s.controllers(upstream, real_kubelets=False, token_controller=True)
    assert "service-ca-cert-publisher" not in base
    assert "service-ca-cert-publisher" in realk8s.controllers(fork, real_kubelets=True, token_controller=False)


class FakeKubelet:
    def __init__(self, base: pathlib.Path, name: str) -> None:
        self.root, self.pod_logs = base / name / "kubelet", base / name / "pods"
        (self.root / "pods").mkdir(parents=True)
        self.pod_logs.mkdir(parents=True)


def fake_sysctls(tmp_path: pathlib.Path, value: str) -> pathlib.Path:
    proc_sys = tmp_path / "proc-sys"
    for name in realk8s.KUBELET_SYSCTLS:
        path = proc_sys / name.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return proc_sys


def values(proc_sys: pathlib.Path) -> set[str]:
    return {(proc_sys / n.replace(".", "/")).read_text().strip() for n in realk8s.KUBELET_SYSCTLS}


def link_log(links: pathlib.Path, kubelet: "FakeKubelet", name: str) -> pathlib.Path:
    """What a kubelet does for every container: a link in /var/log/containers to its log."""
    links.mkdir(exist_ok=True)
    (links / name).symlink_to(kubelet.pod_logs / f"{name}.log")
    return links / name


def test_host_state_is_restored_by_the_last_sandbox_out(tmp_path):
    proc_sys = fake_sysctls(tmp_path, "0")
    record = tmp_path / "run" / "real-kubelets.json"
    record.parent.mkdir()
    links = tmp_path / "var-log-containers"
    first = realk8s.HostState("bnt-a-", record, proc_sys, links)
    second = realk8s.HostState("bnt-b-", record, proc_sys, links)
    first.acquire()
    k1 = FakeKubelet(tmp_path, "a1")
    first.add_kubelet(k1)
    fake_sysctls(tmp_path, "1")  # what a kubelet does on start
    link1 = link_log(links, k1, "c1")
    second.acquire()  # keeps the originals, not what the first sandbox's kubelets set
    k2 = FakeKubelet(tmp_path, "b1")
    second.add_kubelet(k2)
    link2 = link_log(links, k2, "c2")
    first.release()
    assert values(proc_sys) == {"1"}, "the second sandbox's kubelets still run"
    assert not k1.root.exists() and k2.root.exists()
    assert not link1.is_symlink() and link2.is_symlink()
    second.release()
    assert values(proc_sys) == {"0"}
    assert not k2.root.exists() and not record.exists()
    assert not links.exists(), "the kubelets created /var/log/containers"
    assert k1.pod_logs.exists(), "pod logs stay with the node's other logs"


def test_a_log_link_dir_that_was_there_stays(tmp_path):
    proc_sys = fake_sysctls(tmp_path, "0")
    links = tmp_path / "var-log-containers"
    links.mkdir()
    state = realk8s.HostState("bnt-a-", tmp_path / "real-kubelets.json", proc_sys, links)
    state.acquire()
    kubelet = FakeKubelet(tmp_path, "a1")
    state.add_kubelet(kubelet)
    theirs = links / "theirs"
    theirs.symlink_to(tmp_path / "elsewhere.log")
    link_log(links, kubelet, "ours")
    state.release()
    assert sorted(p.name for p in links.iterdir()) == ["theirs"]


def test_a_killed_run_is_undone_by_the_next_with_its_prefix(tmp_path):
    proc_sys = fake_sysctls(tmp_path, "0")
    record = tmp_path / "real-kubelets.json"
    killed = realk8s.HostState("bnt-a-", record, proc_sys, tmp_path / "links")
    killed.acquire()
    kubelet = FakeKubelet(tmp_path, "a1")
    killed.add_kubelet(kubelet)
    fake_sysctls(tmp_path, "1")
    # The process is gone without releasing; the next run with the prefix starts.
    again = realk8s.HostState("bnt-a-", record, proc_sys, tmp_path / "links")
    again.acquire()
    assert values(proc_sys) == {"0"} and not kubelet.root.exists()
    again.release()
    assert not record.exists()


def test_unmount_tree_lists_nothing_outside_the_path(tmp_path):
    assert realk8s.unmount_tree(tmp_path / "not-mounted") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_unmount_tree_takes_the_path_itself_and_everything_below(tmp_path):
    root = tmp_path / "kubelet"
    (root / "pods" / "vol").mkdir(parents=True)
    assert os.system(f"mount --bind {root} {root} && mount -t tmpfs none {root}/pods/vol") == 0
    try:
        assert sorted(realk8s.unmount_tree(root)) == [str(root), f"{root}/pods/vol"]
    finally:
        realk8s.unmount_tree(root)
    assert realk8s.unmount_tree(root) == []
