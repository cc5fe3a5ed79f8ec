"""The kind cluster the user stories run against: created once per session, with the images
built by images/build.sh loaded into it and the chart installed; deleted at the end (unless
KEEP_CLUSTER=1). Skips, with the reason, where no docker engine or kind exists."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[3]
HERE = pathlib.Path(__file__).resolve().parent
CLUSTER = os.environ.get("KIND_CLUSTER_NAME", "bridgenet-e2e")
NAMESPACE = "bridgenet-system"
TEST_NS = "bridgenet-e2e"


def _why_not() -> str | None:
    for tool in ("kind", "docker", "kubectl"):
        if not shutil.which(tool):
            return f"no {tool} on PATH"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "docker client present but no docker engine answers (docker info failed)"
    return None


def pytest_collection_modifyitems(config, items):
    why = _why_not()
    if why:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=f"kind suite needs a docker engine and kind: {why}"))


def sh(*cmd, check=True, timeout=600, input=None) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


class Kube:
    """kubectl against the suite's cluster."""

    def __init__(self, kubeconfig: pathlib.Path):
        self.kubeconfig = kubeconfig

    def __call__(self, *args, check=True, timeout=300, input=None) -> subprocess.CompletedProcess:
        return sh("kubectl", "--kubeconfig", str(self.kubeconfig), *args, check=check, timeout=timeout, input=input)

    def json(self, *args):
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, obj_or_path):
        if isinstance(obj_or_path, (str, pathlib.Path)):
            return self("apply", "-f", str(obj_or_path))
        return self("apply", "-f", "-", input=yaml.safe_dump(obj_or_path))

    def wait_for(self, what: str, predicate, timeout=180, interval=2):
        """Polls `predicate()` until it returns a truthy value; fails with `what` and the last value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except (AssertionError, json.JSONDecodeError, KeyError, IndexError) as err:
                last = err
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def helm_install(kubeconfig: pathlib.Path, values: dict):
    if shutil.which("helm"):
        args = ["helm", "--kubeconfig", str(kubeconfig), "install", "bridgenet", str(REPO / "charts/bridgenet"),
                "--namespace", NAMESPACE, "--create-namespace", "--wait", "--timeout", "5m", "-f", "-"]
        sh(*args, input=yaml.safe_dump(values))
        return
    # Helm's own Go SDK (the same code as the CLI), from helm-python-sdk.
    import helm_python as helm

    with helm.Config(kubeconfig_path=str(kubeconfig), namespace=NAMESPACE) as cfg:
        cfg.install(str(REPO / "charts/bridgenet"), "bridgenet", values, namespace=NAMESPACE,
                    create_namespace=True, wait="watcher", timeout=300)


def helm_test(kubeconfig: pathlib.Path) -> str:
    """`helm test bridgenet`: the chart's self-test hook (templates/tests/self-test.yaml); returns
    its log. Fails with the log when a check fails."""
    if shutil.which("helm"):
        return sh("helm", "--kubeconfig", str(kubeconfig), "test", "bridgenet", "--namespace", NAMESPACE,
                  "--logs", "--timeout", "6m", timeout=420).stdout
    import helm_python as helm

    with helm.Config(kubeconfig_path=str(kubeconfig), namespace=NAMESPACE) as cfg:
        return cfg.test("bridgenet", timeout=360, logs=True).get("logs", "")


def helm_uninstall(kubeconfig: pathlib.Path):
    if shutil.which("helm"):
        sh("helm", "--kubeconfig", str(kubeconfig), "uninstall", "bridgenet", "--namespace", NAMESPACE, "--wait")
        return
    import helm_python as helm

    with helm.Config(kubeconfig_path=str(kubeconfig), namespace=NAMESPACE) as cfg:
        cfg.uninstall("bridgenet", wait="watcher", timeout=300)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    archives = tmp_path_factory.mktemp("images")
    sh("kind", "delete", "cluster", "--name", CLUSTER, check=False)
    sh("kind", "create", "cluster", "--name", CLUSTER, "--config", str(HERE / "kind-config.yaml"),
       "--kubeconfig", str(kubeconfig), "--wait", "120s", timeout=900)
    try:
        tool = os.environ.get("CONTAINER_TOOL") or ("podman" if shutil.which("podman") else "docker")
        env = dict(os.environ, CONTAINER_TOOL=tool)
        subprocess.run(["bash", str(REPO / "images/build.sh"), "--save", str(archives)], check=True, env=env, timeout=1800)
        for archive in sorted(archives.glob("*.tar")):
            sh("kind", "load", "image-archive", str(archive), "--name", CLUSTER, timeout=600)
        # The chart's documented prerequisite for IPv6 networks (examples/dual-stack-network.yaml):
        # the agent is not privileged, so /proc/sys is read-only to it.
        for node in sh("kind", "get", "nodes", "--name", CLUSTER).stdout.split():
            sh("docker", "exec", node, "sysctl", "-w", "net.ipv6.conf.all.forwarding=1")
        helm_install(kubeconfig, {
            "operator": {"clusterCidrs": ["10.244.0.0/16", "10.96.0.0/16"], "image": {"pullPolicy": "Never"}},
            "agent": {"image": {"pullPolicy": "Never"}},
        })
        yield Kube(kubeconfig)
    finally:
        if os.environ.get("KEEP_CLUSTER") != "1":
            sh("kind", "delete", "cluster", "--name", CLUSTER, check=False, timeout=300)


@pytest.fixture(scope="session")
def workers(cluster):
    nodes = cluster.json("get", "nodes")["items"]
    names = sorted(n["metadata"]["name"] for n in nodes if "node-role.kubernetes.io/control-plane" not in n["metadata"]["labels"])
    assert len(names) == 2, names
    return names
