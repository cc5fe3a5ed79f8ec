#!/usr/bin/env bash
# Builds the bridgenet container images on this machine, offline:
#   bridgenet/operator:<version>  (bridgenet-operator)
#   bridgenet/agent:<version>     (bridgenet-agent, the `bridgenet` CNI plugin, busybox for the
#                                  chart's install-cni init container)
#
# No base-image registry is reachable here, so the images are `FROM scratch` and the Rust
# binaries are built on the host: the services as glibc-dynamic binaries plus exactly the shared
# libraries `ldd` names (copied from this host), the CNI plugin relinked statically
# (`-C target-feature=+crt-static`, glibc's libc.a), because the init container copies it onto
# every node's filesystem, where nothing guarantees a compatible glibc. With a registry,
# images/multistage.Containerfile builds the same images the usual way.
#
# Usage: images/build.sh [--save DIR] [--skip-cargo]
#   --save DIR    also write `podman save` archives (docker-archive format) into DIR, for
#                 `kind load image-archive` or `ctr -n k8s.io images import`
#   --skip-cargo  use the binaries already in target/release
# Environment: CONTAINER_TOOL=podman|docker (default podman), CARGO (default cargo),
#              IMAGE_PREFIX (default docker.io/bridgenet).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"
TOOL="${CONTAINER_TOOL:-podman}"
PREFIX="${IMAGE_PREFIX:-docker.io/bridgenet}"
SAVE_DIR=""
SKIP_CARGO=0
while (($#)); do
    case "$1" in
        --save) SAVE_DIR="$2"; shift 2 ;;
        --skip-cargo) SKIP_CARGO=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# The workspace version is the image tag and the chart's appVersion.
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' Cargo.toml)"
[[ -n "$VERSION" ]] || { echo "build.sh: no [workspace.package] version in Cargo.toml" >&2; exit 1; }
CHART_APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/bridgenet/Chart.yaml)"
if [[ "$CHART_APP_VERSION" != "$VERSION" ]]; then
    echo "build.sh: charts/bridgenet/Chart.yaml appVersion $CHART_APP_VERSION != workspace version $VERSION" >&2
    exit 1
fi

tool() {
    if [[ "$TOOL" == podman ]]; then
        # No systemd and cgroups v1 on these machines (see TEST-ENVIRONMENT.md).
        podman --cgroup-manager cgroupfs --events-backend file "$@"
    else
        "$TOOL" "$@"
    fi
}

REL="$ROOT/target/release"
CTX="$ROOT/target/images"
CNI_BIN="$CTX/bridgenet-cni-static"
if ((!SKIP_CARGO)); then
    echo "build.sh: cargo build --release (bridgenet-operator, bridgenet-agent, bridgenet)"
    "$CARGO" build --release --locked -p bridgenet-operator -p bridgenet-agent
    # Relink only the plugin, statically: the dependencies compiled above are reused (crt-static
    # matters at link time for the gnu target), so this costs one crate, not a second build.
    echo "build.sh: relink the CNI plugin statically"
    "$CARGO" rustc --release --locked -p bridgenet-agent --bin bridgenet -- -C target-feature=+crt-static
    mkdir -p "$CTX"
    install -m 0755 "$REL/bridgenet" "$CNI_BIN"
fi
for bin in "$REL/bridgenet-operator" "$REL/bridgenet-agent" "$CNI_BIN"; do
    [[ -x "$bin" ]] || { echo "build.sh: missing $bin (did the build run?)" >&2; exit 1; }
done
# A static(-pie) binary: ldd says "statically linked" (or "not a dynamic executable").
is_static() {
    local out
    out="$(ldd "$1" 2>&1 || true)"
    grep -qE "statically linked|not a dynamic executable" <<<"$out"
}
if ! is_static "$CNI_BIN"; then
    echo "build.sh: $CNI_BIN is not statically linked" >&2
    exit 1
fi
BUSYBOX="$(command -v busybox || true)"
if [[ -z "$BUSYBOX" ]] || ! is_static "$BUSYBOX"; then
    echo "build.sh: need a static busybox (apt-get install busybox-static)" >&2
    exit 1
fi

# Copies a dynamic binary and every shared library it loads (with the loader) under $2.
install_dynamic() {
    local bin="$1" root="$2" dest="$3"
    install -D -m 0755 "$bin" "$root$dest"
    local lib
    for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(0x/{print $1}'); do
        install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
}

rm -rf "$CTX/operator" "$CTX/agent"
mkdir -p "$CTX/operator/rootfs/etc" "$CTX/agent/rootfs/etc"

install_dynamic "$REL/bridgenet-operator" "$CTX/operator/rootfs" /usr/bin/bridgenet-operator
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' \
    > "$CTX/operator/rootfs/etc/passwd"

install_dynamic "$REL/bridgenet-agent" "$CTX/agent/rootfs" /usr/bin/bridgenet-agent
install -D -m 0755 "$CNI_BIN" "$CTX/agent/rootfs/usr/libexec/bridgenet/bridgenet"
# Also beside the agent, where code that looks next to its own executable finds it.
ln -s ../libexec/bridgenet/bridgenet "$CTX/agent/rootfs/usr/bin/bridgenet"
# The firewall drives nftables through `nft -j` (libnftables' JSON API), as netavark does.
NFT="$(command -v nft || true)"
[[ -n "$NFT" ]] || { echo "build.sh: need nft (apt-get install nftables)" >&2; exit 1; }
install_dynamic "$NFT" "$CTX/agent/rootfs" /usr/sbin/nft
install -D -m 0755 "$BUSYBOX" "$CTX/agent/rootfs/bin/busybox"
for applet in sh cp mv chmod ls cat ping sleep; do
    ln -sf busybox "$CTX/agent/rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/:/bin/sh\n' > "$CTX/agent/rootfs/etc/passwd"

for component in operator agent; do
    image="$PREFIX/$component:$VERSION"
    echo "build.sh: $TOOL build $image"
    tool build --quiet -f "images/$component.Containerfile" -t "$image" \
        --build-arg "VERSION=$VERSION" "$CTX/$component" >/dev/null
    if [[ -n "$SAVE_DIR" ]]; then
        mkdir -p "$SAVE_DIR"
        rm -f "$SAVE_DIR/bridgenet-$component-$VERSION.tar"
        save_opts=()
        [[ "$TOOL" == podman ]] && save_opts=(--quiet --format docker-archive)
        tool save "${save_opts[@]}" -o "$SAVE_DIR/bridgenet-$component-$VERSION.tar" "$image" >/dev/null
        echo "build.sh: saved $SAVE_DIR/bridgenet-$component-$VERSION.tar"
    fi
done
echo "build.sh: built $PREFIX/operator:$VERSION and $PREFIX/agent:$VERSION"
