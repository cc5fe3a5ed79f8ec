"""Container images made offline from the host's static busybox (no registry is reachable): a
Docker-archive tarball that `ctr images import` loads, tagged as the sandbox (pause) image and as
the busybox the examples name."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import shutil
import subprocess
import tarfile
import time

PAUSE_IMAGE = "docker.io/bnsandbox/pause:1"
BUSYBOX_TAGS = ("docker.io/bnsandbox/busybox:1", "docker.io/library/busybox:1.36", "docker.io/library/busybox:latest")


class ImageError(RuntimeError):
    pass


def find_static_busybox() -> pathlib.Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = pathlib.Path(candidate)
        if path.exists():
            # The image holds nothing but this one file, so it must not need a dynamic loader.
            out = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
            text = out.stdout + out.stderr
            if "not a dynamic executable" in text or "statically linked" in text:
                return path.resolve()
    raise ImageError("no static busybox found (apt-get install busybox-static)")


def _layer(busybox: pathlib.Path) -> bytes:
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    mtime = 0  # reproducible digests
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "var", "run", "root"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755, mtime
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode, info.mtime = len(data), 0o755, mtime
        tar.addfile(info, io.BytesIO(data))
        for applet in sorted(set(applets) - {"busybox"}):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "busybox", 0o777, mtime
            tar.addfile(link)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(raw), 0o644, mtime
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def _config(diff_id: str, cmd: list[str]) -> bytes:
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "bnsandbox.images"}],
    }
    return json.dumps(cfg, sort_keys=True).encode()


def build_archive(dest: pathlib.Path) -> pathlib.Path:
    """Writes a Docker-archive tarball holding the pause and busybox images; returns its path."""
    layer = _layer(find_static_busybox())
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    pause_cfg = _config(diff_id, ["/bin/sleep", "2147483647"])
    busybox_cfg = _config(diff_id, ["/bin/sh"])
    layer_path = f"{diff_id.split(':')[1]}/layer.tar"
    manifest = []
    files: dict[str, bytes] = {layer_path: layer}
    for cfg, tags in ((pause_cfg, [PAUSE_IMAGE]), (busybox_cfg, list(BUSYBOX_TAGS))):
        name = hashlib.sha256(cfg).hexdigest() + ".json"
        files[name] = cfg
        manifest.append({"Config": name, "RepoTags": tags, "Layers": [layer_path]})
    files["manifest.json"] = json.dumps(manifest).encode()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    shutil.move(tmp, dest)
    return dest
