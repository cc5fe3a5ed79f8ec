"""The flags and environment variables the chart passes exist in the binaries' clap
definitions (operator/src/cli.rs, node-agent/src/cli.rs), so a renamed flag breaks here and not
as a CrashLoopBackOff on a cluster. (test_images.py checks the same against the built
binaries' `--help`.)"""

from __future__ import annotations

import re

import pytest

from conftest import REPO, render
from test_render import VALUE_SETS



def clap_args(path):
    """{--long-flag} and {ENV} of the `#[arg(long ...)]` fields of a clap derive struct."""
    text = path.read_text()
    flags, envs = set(), set()
    for attrs, field in re.findall(r"#\[arg\((.*?)\)\]\s*(?:///[^\n]*\n\s*)*pub\s+(\w+)\s*:", text, re.S):
        if not re.search(r"\blong\b", attrs):
            continue
        explicit = re.search(r'\blong\s*=\s*"([^"]+)"', attrs)
        flags.add("--" + (explicit.group(1) if explicit else field.replace("_", "-")))
        env = re.search(r'\benv\s*=\s*"([^"]+)"', attrs)
        if env:
            envs.add(env.group(1))
    return flags, envs


COMPONENTS = {
    "operator": ("Deployment", REPO / "operator" / "src" / "cli.rs", set()),
    # MALLOC_ARENA_MAX is glibc's, read before main.
    "agent": ("DaemonSet", REPO / "node-agent" / "src" / "cli.rs", {"MALLOC_ARENA_MAX"}),
}


def test_clap_parser_reads_a_known_struct():
    path = REPO / "node-agent" / "src" / "cli.rs"
    if not path.exists():
        pytest.skip("node-agent/src/cli.rs not written yet")
    flags, envs = clap_args(path)
    # The preamble's fixed agent flags.
    assert {"--node-name", "--state-dir", "--socket", "--cni-bin-dir", "--cni-conf-dir",
            "--cri-endpoint", "--health-addr", "--resync-interval", "--log-json"} <= flags
    assert "NODE_NAME" in envs


@pytest.mark.parametrize("component", sorted(COMPONENTS))
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_flags_and_env_exist_in_the_binary(component, value_set):
    kind, cli, extra_env = COMPONENTS[component]
    if not cli.exists():
        pytest.skip(f"{cli.relative_to(REPO)} not written yet")
    flags, envs = clap_args(cli)
    assert flags, f"no clap flags found in {cli}"
    workload = next(o for o in render(VALUE_SETS[value_set]).of_kind(kind))
    container = next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == component)
    for arg in container.get("args", []):
        name = arg.split("=", 1)[0]
        assert name in flags, f"{component}: chart passes {name}, {cli.name} has {sorted(flags)}"
    for env in container.get("env", []):
        assert env["name"] in envs | extra_env, f"{component}: chart sets {env['name']}, {cli.name} reads {sorted(envs)}"


def test_self_test_hook_flags_exist_in_the_binary():
    """The `helm test` hook's `self-test` flags are clap flags of operator/src/cli.rs."""
    flags, _ = clap_args(REPO / "operator" / "src" / "cli.rs")
    container = render().one("Pod", "-selftest")["spec"]["containers"][0]
    assert container["args"][0] == "self-test"
    for arg in container["args"][1:]:
        assert arg.split("=", 1)[0] in flags, f"the hook passes {arg}; operator/src/cli.rs has {sorted(flags)}"
