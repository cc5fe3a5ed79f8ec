#!/usr/bin/env bash
# Builds the bridgenet an upgrade test starts from: the operator, agent and CNI plugin (debug)
# and the CRDs of git revision REV, into OUT/bin and OUT/crds. Prints OUT.
#
#   scripts/build-upgrade-from.sh [REV] [OUT]
#
# REV defaults to UPGRADE_FROM (the Makefile's): the last commit with the NodeBridge shape the
# upgrade test leaves. OUT defaults to target/upgrade-from/REV; what is printed is absolute. The revision is checked out in a temporary worktree (the clone's own
# history: nothing is fetched) and built in its own target directory, seeded with hard links to
# this tree's debug build so that the dependencies both share are not compiled again. Nothing
# is rebuilt when OUT already holds the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:-${UPGRADE_FROM:?set UPGRADE_FROM or pass a revision}}"
out="${2:-target/upgrade-from/$rev}"
if [[ -x "$out/bin/bridgenet-agent" && -x "$out/bin/bridgenet-operator" && -x "$out/bin/bridgenet" && -d "$out/crds" ]]; then
    (cd "$out" && pwd)
    exit 0
fi
if ! git rev-parse --verify --quiet "$rev^{commit}" >/dev/null &&
    [[ "$(git rev-parse --is-shallow-repository)" == true ]]; then
    # A shallow clone (some CI checkouts): its origin has the history.
    git fetch --quiet --unshallow || true
fi
git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || {
    echo "build-upgrade-from: revision $rev is not in this clone's history" >&2
    exit 1
}
tree="$(mktemp -d /tmp/bridgenet-upgrade-from.XXXXXX)"
cleanup() {
    git worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
    git worktree prune
}
trap cleanup EXIT
git worktree add --quiet --detach "$tree" "$rev"
mkdir -p "$out/target"
if [[ -d target/debug && ! -d "$out/target/debug" ]]; then
    cp -al target/debug "$out/target/debug"
fi
target_dir="$(cd "$out/target" && pwd)"
(cd "$tree" && CARGO_TARGET_DIR="$target_dir" cargo build --locked -q -p bridgenet-operator -p bridgenet-agent)
mkdir -p "$out/bin" "$out/crds"
for b in bridgenet-operator bridgenet-agent bridgenet; do
    cp "$out/target/debug/$b" "$out/bin/$b"
done
cp "$tree"/crds/yaml/*.yaml "$out/crds/"
(cd "$out" && pwd)
