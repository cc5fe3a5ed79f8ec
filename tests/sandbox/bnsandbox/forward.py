"""A small TCP forwarder: listens on the host's underlay address and relays each connection to an
API server the node namespaces cannot route to (one on the host's loopback, or anywhere only the
host reaches). The bytes are relayed untouched, so TLS stays end to end between the client in
the node and the API server; the node's kubeconfig names the original host in `tls-server-name`.

    python3 -m bnsandbox.forward --listen 10.251.0.1:0 --to 127.0.0.1:6443 --ready-file F

Bounded: at most `--max-connections` relayed at once (more are closed at accept), each upstream
connect times out; it stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import pathlib
import signal
import sys
import urllib.parse

log = logging.getLogger("bnsandbox.forward")

CHUNK = 64 * 1024


def split_hostport(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        # Pass the half-close on: a client that is done sending may still read the answer.
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


def node_kubeconfig(flat: dict, listen_host: str, port: int) -> tuple[dict, tuple[str, int]]:
    """For a minified, flattened kubeconfig (`kubectl config view --raw --flatten --minify`):
    the same kubeconfig with `server` pointing at the forwarder and, for HTTPS, `tls-server-name`
    set to the original host (unless already set), so the certificate is still verified against
    the name the server really has; credentials are left as they are. Also returns the original
    server's (host, port), the forwarder's target."""
    ctx_name = flat.get("current-context")
    ctx = next(c["context"] for c in flat["contexts"] if c["name"] == ctx_name)
    derived = {**flat, "clusters": []}
    target = None
    for entry in flat["clusters"]:
        cluster = dict(entry["cluster"])
        if entry["name"] == ctx["cluster"]:
            url = urllib.parse.urlsplit(cluster["server"])
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"unsupported API server URL {cluster['server']!r}")
            target = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
            cluster["server"] = urllib.parse.urlunsplit(
                (url.scheme, f"{listen_host}:{port}", url.path, url.query, url.fragment))
            if url.scheme == "https":
                cluster.setdefault("tls-server-name", url.hostname)
        derived["clusters"].append({**entry, "cluster": cluster})
    if target is None:
        raise ValueError(f"the current context's cluster {ctx['cluster']!r} is not in the kubeconfig")
    return derived, target


class Forwarder:
    def __init__(self, target: tuple[str, int], max_connections: int = 256, connect_timeout: float = 10.0) -> None:
        self.target = target
        self.slots = asyncio.Semaphore(max_connections)
        self.connect_timeout = connect_timeout

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self.slots.locked():
            log.warning("refusing a connection: %s already relayed", self.target)
            c_writer.close()
            return
        async with self.slots:
            try:
                u_reader, u_writer = await asyncio.wait_for(asyncio.open_connection(*self.target),
                                                            self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as err:
                log.warning("cannot reach %s:%s: %s", *self.target, err)
                c_writer.close()
                return
            try:
                await asyncio.gather(_pipe(c_reader, u_writer), _pipe(u_reader, c_writer))
            except asyncio.CancelledError:
                pass  # the forwarder is stopping: close both ends below, quietly
            finally:
                for w in (u_writer, c_writer):
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()


async def serve(listen: tuple[str, int], target: tuple[str, int], ready_file: str | None,
                max_connections: int) -> None:
    fwd = Forwarder(target, max_connections)
    server = await asyncio.start_server(fwd.handle, *listen)
    port = server.sockets[0].getsockname()[1]
    log.info("forwarding %s:%s to %s:%s", listen[0], port, *target)
    if ready_file:
        # Written whole, then renamed: a reader never sees a partial port.
        tmp = pathlib.Path(ready_file + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.rename(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bnsandbox.forward", description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="HOST:PORT to listen on (port 0 picks a free one)")
    p.add_argument("--to", required=True, help="HOST:PORT to relay to")
    p.add_argument("--ready-file", help="write the bound port here once listening")
    p.add_argument("--max-connections", type=int, default=256)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(split_hostport(args.listen), split_hostport(args.to), args.ready_file, args.max_connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
