"""The sandbox's upstream DNS server (`bnsandbox.upstream_dns`) on the host's loopback: its zone
over UDP and TCP, NXDOMAIN with the question echoed, no data for AAAA of its names, FORMERR for
garbage, every query in its log — and busybox nslookup, the tool the end-to-end suite asks with,
reads its answers. (From a node namespace, at its sandbox address: tests/test_up.py.)"""

import shutil
import socket
import subprocess
import sys
import time

import pytest

from bnsandbox import upstream_dns as dns
from conftest import SANDBOX


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream-dns")
    ready, queries = tmp / "ready", tmp / "queries"
    proc = subprocess.Popen([sys.executable, "-m", "bnsandbox.upstream_dns", "--listen", "127.0.0.1:0",
                             "--log", str(queries), "--ready-file", str(ready)], cwd=SANDBOX,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not (ready.exists() and ready.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, "the upstream DNS server did not start"
        time.sleep(0.05)
    port = int(ready.read_text().strip().rsplit(":", 1)[1])
    try:
        yield port, queries
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_the_zone_answers_and_everything_else_is_nxdomain(server, tcp):
    port, _ = server
    got = dns.query("127.0.0.1", "WWW.Upstream.Test", "A", port=port, tcp=tcp)
    assert got.rcode == 0 and got.flags & dns.AA and got.flags & dns.QR
    assert [(r.name, r.value(), r.ttl) for r in got.answers] == [("WWW.Upstream.Test", "198.51.100.7", dns.TTL)]
    # Known name, other type: NOERROR, no data, the zone's SOA for negative caching.
    got = dns.query("127.0.0.1", "www.upstream.test", "AAAA", port=port, tcp=tcp)
    assert (got.rcode, got.answers, [r.rtype for r in got.authority]) == (0, [], [dns.T_SOA])
    got = dns.query("127.0.0.1", "db.default.svc.cluster.local", "A", port=port, tcp=tcp)
    assert got.rcode == 3 and not got.answers
    assert [(q.name, q.qtype) for q in got.questions] == [("db.default.svc.cluster.local", 1)]


def test_garbage_gets_formerr_and_every_query_is_logged(server):
    port, queries = server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        # A header claiming one question, then a label running past the end.
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x09abc", ("127.0.0.1", port))
        reply = s.recv(512)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0xF == 1
    dns.query("127.0.0.1", "api.upstream.test", "A", port=port)
    log = queries.read_text()
    assert "FORMERR" in log
    assert " api.upstream.test A NOERROR 198.51.100.8" in log


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox is not installed (scripts/setup.sh)")
def test_busybox_nslookup_reads_the_answers(server):
    port, _ = server

    def nslookup(*args):
        return subprocess.run(["busybox", "nslookup", f"-port={port}", "-timeout=2", *args, "127.0.0.1"],
                              capture_output=True, text=True, timeout=10)

    found = nslookup("www.upstream.test")
    assert found.returncode == 0 and "Address: 198.51.100.7" in found.stdout, found
    missing = nslookup("nothing.example")
    assert missing.returncode != 0 and "server can't find nothing.example: NXDOMAIN" in missing.stdout, missing

