"""The sandbox's "upstream" DNS server: the resolver of the outside world that bridgenet's embedded
per-network resolvers forward names they do not own to. It serves one fixed zone, `upstream.test`
(A records; AAAA and other types of those names get NOERROR with no data), answers NXDOMAIN for
every other name, over UDP and TCP, and logs every query it sees (time, transport, client, name,
type, answer) so a test can tell that a forwarded query really came from a node.

    python3 -m bnsandbox.upstream_dns --listen 10.251.255.53:53 --log STATE/upstream-dns.queries

The sandbox runs it in the "internet" namespace on an address of its own (`ADDRESS`, port 53:
busybox nslookup can name another port with `-port=`, but the agent's upstream list takes a port
anyway, and 53 keeps manual checks plain). The DNS wire format (RFC 1035) is written by hand: the
stdlib has none, and the sandbox takes no new dependencies for a dozen fields.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import logging
import pathlib
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field

log = logging.getLogger("bnsandbox.upstream_dns")

# On the internet namespace's lo, next to INTERNET_IP: routed from every node via its default route.
ADDRESS = "10.251.255.53"
PORT = 53
ORIGIN = "upstream.test"
# Addresses from TEST-NET-2 (RFC 5737): answers only, nothing ever sends traffic to them.
ZONE = {
    "upstream.test": "198.51.100.1",
    "www.upstream.test": "198.51.100.7",
    "api.upstream.test": "198.51.100.8",
}
TTL = 30
# Negative answers carry the zone's SOA, whose minimum is what resolvers cache NXDOMAIN for
# (RFC 2308): short, so a test that adds a name is not fooled by a cache.
NEGATIVE_TTL = 5

TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 255: "ANY"}
QTYPE = {v: k for k, v in TYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
T_A, T_SOA, T_ANY = 1, 6, 255
CLASS_IN = 1
# Header flag bits.
QR, AA, RD, RA = 0x8000, 0x0400, 0x0100, 0x0080


class WireError(ValueError):
    """A message that is not DNS (or is cut short)."""


# -- the wire format ------------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii", "strict")
        if not 0 < len(raw) < 64:
            raise WireError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out) + b"\x00"


def decode_name(msg: bytes, pos: int) -> tuple[str, int]:
    """The name at `pos` (following compression pointers) and the offset after it."""
    labels: list[str] = []
    end = None
    for _ in range(128):  # bounds pointer loops
        if pos >= len(msg):
            raise WireError("name runs past the message")
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise WireError("truncated pointer")
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        if length & 0xC0:
            raise WireError("unknown label type")
        pos += 1
        if length == 0:
            return ".".join(labels), end if end is not None else pos
        if pos + length > len(msg):
            raise WireError("label runs past the message")
        labels.append(msg[pos:pos + length].decode("ascii", "replace"))
        pos += length
    raise WireError("compression loop")


@dataclass
class Question:
    name: str
    qtype: int
    qclass: int = CLASS_IN

    def encode(self) -> bytes:
        return encode_name(self.name) + struct.pack("!HH", self.qtype, self.qclass)


@dataclass
class Record:
    name: str
    rtype: int
    ttl: int
    rdata: bytes

    def encode(self) -> bytes:
        return encode_name(self.name) + struct.pack("!HHIH", self.rtype, CLASS_IN, self.ttl, len(self.rdata)) + self.rdata

    def value(self) -> str:
        """The record's data as text: an address for A/AAAA, else hex."""
        if self.rtype == T_A and len(self.rdata) == 4:
            return str(ipaddress.IPv4Address(self.rdata))
        if self.rtype == QTYPE["AAAA"] and len(self.rdata) == 16:
            return str(ipaddress.IPv6Address(self.rdata))
        return self.rdata.hex()


@dataclass
class Message:
    id: int
    flags: int
    questions: list[Question] = field(default_factory=list)
    answers: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    def encode(self) -> bytes:
        head = struct.pack("!HHHHHH", self.id, self.flags, len(self.questions), len(self.answers),
                           len(self.authority), 0)
        return (head + b"".join(q.encode() for q in self.questions) + b"".join(r.encode() for r in self.answers)
                + b"".join(r.encode() for r in self.authority))

    @classmethod
    def decode(cls, msg: bytes) -> "Message":
        """Header, questions, answers and authority; the additional section (an EDNS OPT record,
        typically) is not read."""
        if len(msg) < 12:
            raise WireError("shorter than a header")
        ident, flags, qd, an, ns, _ = struct.unpack("!HHHHHH", msg[:12])
        pos = 12
        out = cls(ident, flags)
        for _ in range(qd):
            name, pos = decode_name(msg, pos)
            if pos + 4 > len(msg):
                raise WireError("truncated question")
            qtype, qclass = struct.unpack("!HH", msg[pos:pos + 4])
            pos += 4
            out.questions.append(Question(name, qtype, qclass))
        for section, count in ((out.answers, an), (out.authority, ns)):
            for _ in range(count):
                name, pos = decode_name(msg, pos)
                if pos + 10 > len(msg):
                    raise WireError("truncated record")
                rtype, _, ttl, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
                pos += 10
                if pos + rdlen > len(msg):
                    raise WireError("truncated record data")
                section.append(Record(name, rtype, ttl, msg[pos:pos + rdlen]))
                pos += rdlen
        return out


def soa() -> Record:
    rdata = (encode_name(f"ns.{ORIGIN}") + encode_name(f"hostmaster.{ORIGIN}")
             + struct.pack("!IIIII", 1, 3600, 600, 86400, NEGATIVE_TTL))
    return Record(ORIGIN, T_SOA, NEGATIVE_TTL, rdata)


def in_zone(name: str) -> bool:
    return name == ORIGIN or name.endswith("." + ORIGIN)


def answer(query: bytes) -> tuple[bytes | None, str]:
    """The response to one query message (None: not even a header to answer to), and a line
    describing it for the query log."""
    try:
        msg = Message.decode(query)
    except WireError as err:
        if len(query) < 12:
            return None, f"dropped: {err}"
        ident, flags = struct.unpack("!HH", query[:4])
        return Message(ident, QR | (flags & 0x7800) | (flags & RD) | 1).encode(), f"FORMERR ({err})"
    if msg.flags & QR:
        return None, "dropped: a response, not a query"
    opcode = msg.flags & 0x7800
    base = QR | opcode | (msg.flags & RD) | RA
    if opcode != 0 or len(msg.questions) != 1:
        return Message(msg.id, base | 4, msg.questions).encode(), "NOTIMP"
    q = msg.questions[0]
    name = q.name.lower().rstrip(".")
    qtype = TYPES.get(q.qtype, str(q.qtype))
    reply = Message(msg.id, base, [q])
    if name in ZONE and q.qclass == CLASS_IN:
        reply.flags |= AA
        if q.qtype in (T_A, T_ANY):
            reply.answers.append(Record(q.name, T_A, TTL, ipaddress.IPv4Address(ZONE[name]).packed))
        else:
            reply.authority.append(soa())  # NOERROR, no data
    else:
        reply.flags |= 3
        if in_zone(name):
            reply.flags |= AA
            reply.authority.append(soa())
    desc = f"{q.name} {qtype} {RCODES[reply.rcode]}" + "".join(f" {r.value()}" for r in reply.answers)
    return reply.encode(), desc


def make_query(name: str, qtype: str | int = "A", ident: int = 0x4242) -> bytes:
    code = qtype if isinstance(qtype, int) else QTYPE[qtype.upper()]
    return Message(ident, RD, [Question(name, code)]).encode()


def query(server: str, name: str, qtype: str | int = "A", port: int = PORT, tcp: bool = False,
          timeout: float = 2.0) -> Message:
    """One query to `server`, for tests: the decoded response (raises on timeout)."""
    data = make_query(name, qtype)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    if tcp:
        with socket.create_connection((server, port), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(data)) + data)
            size = struct.unpack("!H", _recv_exactly(s, 2))[0]
            return Message.decode(_recv_exactly(s, size))
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (server, port))
        return Message.decode(s.recv(65535))


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise WireError("connection closed mid-message")
        buf += chunk
    return buf


# -- the server -----------------------------------------------------------------------------------


class QueryLog:
    def __init__(self, path: pathlib.Path | None) -> None:
        self.file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives with the server

    def write(self, transport: str, peer, desc: str) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        line = f"{stamp} {transport} {peer[0]}:{peer[1]} {desc}"
        log.debug("%s", line)
        if self.file:
            self.file.write(line + "\n")


class Udp(asyncio.DatagramProtocol):
    def __init__(self, qlog: QueryLog) -> None:
        self.qlog = qlog
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        reply, desc = answer(data)
        self.qlog.write("udp", addr, desc)
        # Replies stay far below 512 bytes (one question, one record): no truncation needed.
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _tcp_client(qlog: QueryLog, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername") or ("?", 0)
    try:
        while True:
            # Idle connections are closed after a while, as servers do (RFC 7766 suggests seconds).
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
            data = await asyncio.wait_for(reader.readexactly(size), 10)
            reply, desc = answer(data)
            qlog.write("tcp", peer, desc)
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, qlog: QueryLog, ready_file: pathlib.Path | None = None,
                stop: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(lambda: Udp(qlog), local_addr=(host, port))
    # The same port as UDP got (port 0 picks one for UDP first, then TCP takes it too).
    bound = udp.get_extra_info("sockname")[1]
    tcp = await asyncio.start_server(lambda r, w: _tcp_client(qlog, r, w), host, bound)
    log.info("serving %s on %s:%d (udp, tcp)", ORIGIN, host, bound)
    if ready_file:
        ready_file.write_text(f"{host}:{bound}\n")
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        udp.close()
        tcp.close()
        await tcp.wait_closed()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bnsandbox.upstream_dns", description=__doc__.splitlines()[0])
    p.add_argument("--listen", default=f"{ADDRESS}:{PORT}", help="HOST:PORT (port 0: a free one)")
    p.add_argument("--log", help="append one line per query here")
    p.add_argument("--ready-file", help="write HOST:PORT here once both sockets listen")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s upstream-dns %(message)s")
    qlog = QueryLog(pathlib.Path(args.log) if args.log else None)

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await serve(host.strip("[]"), int(port), qlog, pathlib.Path(args.ready_file) if args.ready_file else None,
                    stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
