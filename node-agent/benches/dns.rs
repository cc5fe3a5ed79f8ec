//! DNS answers of bridgenet's network resolver next to dnsmasq, in one run on one machine.
//!
//! Both serve the same zone, 1,000 pods of namespace `bench` (`pod-N`, `pod-N.bench`, an alias
//! `svc-K` on every tenth pod; dnsmasq reads them from an `--addn-hosts` file) on loopback, UDP,
//! and forward other names to the same upstream: a responder in this process that answers at
//! once. Measured: the latency of one client asking sequentially (local and forwarded names),
//! the queries per second 16 clients with 8 queries in flight each get answered, with the
//! server's CPU time per query, and the server's resident memory with no names, 1,000 pods and
//! 10,000 pods.
//!
//! Latency is measured twice, with the server pinned to the client's core and to another core:
//! on a VM, waking a thread on an idle core costs tens of µs, more than either server's work,
//! and unpinned the scheduler's placement would make the figure (16 or 48 µs, from run to run).
//!
//! bridgenet's resolver runs in a child process (this binary started again with
//! `BNT_BENCH_DNS_SERVE`), on a runtime built like the agent's, so that its RSS and CPU are its
//! own, as dnsmasq's are. Needs `dnsmasq` (Debian `dnsmasq-base`); without it only bridgenet's
//! lines are printed. Run with `scripts/bench-dns.sh` (`make bench-dns`) or
//! `cargo bench -p bridgenet-agent --bench dns`; `BNT_BENCH_DNS_LOCAL` and
//! `BNT_BENCH_DNS_FORWARDED` set the latency runs' queries (20,000 and 5,000),
//! `BNT_BENCH_DNS_SECONDS` the throughput runs' length (3).

use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bridgenet_agent::dns::server::{self, NetworkState, Resolver, Shared};
use bridgenet_agent::dns::upstream::Upstreams;
use bridgenet_agent::dns::zone::Zone;
use bridgenet_crds::v1alpha1::Endpoint;
use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Pods of the measured zone.
const PODS: usize = 1_000;
/// Zone sizes of the memory table.
const MEMORY_PODS: [usize; 3] = [0, 1_000, 10_000];
const NAMESPACE: &str = "bench";
/// One pod in this many has an alias.
const ALIAS_EVERY: usize = 10;
/// The resolver's per-client rate for the bench: far above what the clients ask, so that the
/// limiter is on the path (as in the agent) but never drops a query.
const CLIENT_QPS: u32 = 1_000_000;
/// The agent's default (`--dns-client-qps`), for the header.
const AGENT_CLIENT_QPS: u32 = 500;
/// Forwarded names, asked in turn: a working set any cache holds.
const FORWARDED_NAMES: usize = 100;
/// dnsmasq's default `--cache-size`.
const DNSMASQ_DEFAULT_CACHE: u32 = 150;
/// Concurrent clients of the throughput runs, each from its own loopback address.
const CLIENTS: u8 = 16;
/// Queries each client keeps in flight.
const WINDOW: usize = 8;
/// Latency runs are cut in this many rounds, every server in turn.
const ROUNDS: usize = 10;
/// Throughput runs likewise.
const THROUGHPUT_ROUNDS: usize = 3;

/// The name of the upstream's thread, to pin it with the client.
const UPSTREAM_THREAD: &str = "upstream";

const ENV_SERVE: &str = "BNT_BENCH_DNS_SERVE";
const ENV_UPSTREAM: &str = "BNT_BENCH_DNS_UPSTREAM";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let result = match std::env::var(ENV_SERVE) {
        Ok(pods) => serve(&pods),
        Err(_) => run(),
    };
    if let Err(e) = result {
        eprintln!("bench dns: {e:#}");
        std::process::exit(1);
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// --- the zone -----------------------------------------------------------------------------

/// Pod `i`'s address, in 10.20.0.0/16.
fn address(i: usize) -> Ipv4Addr {
    let host = u32::try_from(i + 2).unwrap_or(u32::MAX) & 0xffff;
    Ipv4Addr::from(0x0a14_0000 | host)
}

fn alias(i: usize) -> Option<String> {
    i.is_multiple_of(ALIAS_EVERY)
        .then(|| format!("svc-{}", i / ALIAS_EVERY))
}

fn endpoints(pods: usize) -> Vec<Endpoint> {
    (0..pods)
        .map(|i| Endpoint {
            namespace: NAMESPACE.into(),
            pod: format!("pod-{i}"),
            interface: "net1".into(),
            ipv4: Some(format!("{}/16", address(i))),
            ipv6: None,
            mac: format!("02:42:0a:14:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff),
            aliases: alias(i).into_iter().collect(),
            container_id: Some(format!("{i:064x}")),
            since: None,
        })
        .collect()
}

/// The same names for dnsmasq: `address pod-N pod-N.bench [svc-K]`.
fn hosts_file(pods: usize) -> String {
    (0..pods)
        .map(|i| {
            let alias = alias(i).map(|a| format!(" {a}")).unwrap_or_default();
            format!("{} pod-{i} pod-{i}.{NAMESPACE}{alias}\n", address(i))
        })
        .collect()
}

/// Every name of the zone once, shuffled (the same order for every server).
fn local_names(pods: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..pods)
        .flat_map(|i| {
            [
                Some(format!("pod-{i}")),
                Some(format!("pod-{i}.{NAMESPACE}")),
                alias(i),
            ]
            .into_iter()
            .flatten()
        })
        .collect();
    fastrand::Rng::with_seed(12).shuffle(&mut names);
    names
}

fn forwarded_names() -> Vec<String> {
    (0..FORWARDED_NAMES)
        .map(|i| format!("www{i}.example.org"))
        .collect()
}

/// An A query for `name`, ID 0 (set when sent), recursion desired, no EDNS (as glibc asks).
fn query(name: &str) -> anyhow::Result<Vec<u8>> {
    let mut m = Message::new();
    m.set_recursion_desired(true);
    m.add_query(Query::query(
        Name::from_ascii(format!("{name}."))?,
        RecordType::A,
    ));
    Ok(m.to_vec()?)
}

fn queries(names: &[String]) -> anyhow::Result<Vec<Vec<u8>>> {
    names.iter().map(|n| query(n)).collect()
}

// --- bridgenet's resolver, in its own process ---------------------------------------------

/// The child: serves `pods` pods on 127.0.0.1, an unused port, until stdin closes. Prints the
/// address it listens on.
fn serve(pods: &str) -> anyhow::Result<()> {
    let pods: usize = pods
        .parse()
        .context("BNT_BENCH_DNS_SERVE: a number of pods")?;
    let upstream: SocketAddr = std::env::var(ENV_UPSTREAM)
        .context("BNT_BENCH_DNS_UPSTREAM")?
        .parse()
        .context("BNT_BENCH_DNS_UPSTREAM: an address")?;
    // The agent keeps the endpoints it built the zone from (its NodeBridge book): so does this.
    let endpoints = endpoints(pods);
    // As the agent's: tokio's multi-thread runtime, a worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async {
        let state = NetworkState {
            network: "bench".into(),
            zone: Zone::build(&endpoints),
            // Clients ask from loopback: it stands for the network's subnet.
            subnets: vec!["127.0.0.0/8".parse()?, "10.20.0.0/16".parse()?],
            internal: false,
        };
        let shared: Shared = Arc::new(RwLock::new(Arc::new(state)));
        let resolver = Arc::new(Resolver::new(
            Upstreams::new(vec![upstream], Vec::new()),
            "cluster.local",
            CLIENT_QPS,
        ));
        let listener = server::listen("127.0.0.1:0".parse()?, shared, resolver)
            .context("listening on 127.0.0.1")?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", listener.addr)?;
            out.flush()?;
        }
        tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
        drop(listener);
        anyhow::Ok(())
    })?;
    drop(endpoints);
    Ok(())
}

// --- servers --------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bridgenet,
    Dnsmasq { cache: u32 },
}

impl Kind {
    fn label(self) -> String {
        match self {
            Kind::Bridgenet => "bridgenet".into(),
            Kind::Dnsmasq { cache: 0 } => "dnsmasq cache-size=0".into(),
            Kind::Dnsmasq { cache } => format!("dnsmasq cache-size={cache}"),
        }
    }
}

/// A running server; killed when dropped.
struct Server {
    kind: Kind,
    addr: SocketAddr,
    child: Child,
    log: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(
        kind: Kind,
        pods: usize,
        upstream: SocketAddr,
        dnsmasq: &Path,
    ) -> anyhow::Result<Self> {
        let mut server = match kind {
            Kind::Bridgenet => start_bridgenet(pods, upstream)?,
            Kind::Dnsmasq { cache } => start_dnsmasq(dnsmasq, cache, pods, upstream)?,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Until it answers a forwarded name (10 s at most).
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let socket = client_socket(Ipv4Addr::LOCALHOST, self.addr, Duration::from_millis(100))?;
        let mut packet = query("ready.example.org")?;
        packet[..2].copy_from_slice(&[0xbe, 0xef]);
        let mut buf = [0u8; 4096];
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited at start ({status}){}",
                    self.kind.label(),
                    self.log_tail()
                );
            }
            if socket.send(&packet).is_ok() && socket.recv(&mut buf).is_ok() {
                return Ok(());
            }
            // Not bound yet: ICMP port unreachable (ECONNREFUSED) or no answer.
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} did not answer in 10 s{}",
            self.kind.label(),
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| format!(":\n{s}"))
            .unwrap_or_default()
    }
}

fn start_bridgenet(pods: usize, upstream: SocketAddr) -> anyhow::Result<Server> {
    let exe = std::env::current_exe().context("this bench's own path")?;
    let child = Command::new(exe)
        .env(ENV_SERVE, pods.to_string())
        .env(ENV_UPSTREAM, upstream.to_string())
        // Its stdin closing (this process gone) ends it.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the resolver child")?;
    let mut server = Server {
        kind: Kind::Bridgenet,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        child,
        log: None,
        _dir: None,
    };
    let stdout = server.child.stdout.take().context("the child's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    server.addr = line
        .trim()
        .parse()
        .with_context(|| format!("the resolver child printed {line:?}, not its address"))?;
    Ok(server)
}

fn start_dnsmasq(
    binary: &Path,
    cache: u32,
    pods: usize,
    upstream: SocketAddr,
) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    // dnsmasq started as root reads its hosts file after dropping to `nobody`.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, hosts_file(pods))?;
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o644))?;
    let log = dir.path().join("log");
    let port = free_port()?;
    let child = Command::new(binary)
        .arg("--keep-in-foreground")
        .arg("--conf-file=/dev/null")
        .arg("--no-resolv")
        .arg("--no-hosts")
        .arg(format!("--addn-hosts={}", hosts.display()))
        .arg(format!("--server={}#{}", upstream.ip(), upstream.port()))
        .arg(format!("--port={port}"))
        .arg("--listen-address=127.0.0.1")
        .arg("--bind-interfaces")
        .arg(format!("--cache-size={cache}"))
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .arg("--log-facility=-")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(Server {
        kind: Kind::Dnsmasq { cache },
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        child,
        log: Some(log),
        _dir: Some(dir),
    })
}

/// A loopback port free for UDP and TCP (dnsmasq binds both).
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free loopback port for dnsmasq")
}

fn find_dnsmasq() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BNT_BENCH_DNSMASQ") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.is_file())
}

fn dnsmasq_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into())
}

// --- the upstream ---------------------------------------------------------------------------

/// A resolver on loopback that answers every A query at once with 192.0.2.1, TTL 300.
fn start_upstream() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    std::thread::Builder::new()
        .name(UPSTREAM_THREAD.into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = upstream_answer(&buf[..n]) {
                    let _ = socket.send_to(&answer, from);
                }
            }
        })?;
    Ok(addr)
}

fn upstream_answer(packet: &[u8]) -> Option<Vec<u8>> {
    let mut m = Message::from_vec(packet).ok()?;
    let name = m.queries().first()?.name().clone();
    m.set_message_type(MessageType::Response)
        .set_recursion_available(true);
    m.add_answer(Record::from_rdata(
        name,
        300,
        RData::A(A::new(192, 0, 2, 1)),
    ));
    m.to_vec().ok()
}

// --- measurements ---------------------------------------------------------------------------

fn client_socket(
    from: Ipv4Addr,
    server: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind((from, 0))?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(timeout))?;
    Ok(socket)
}

/// An answer with no error and at least one record (every name asked has an address).
fn check(kind: Kind, reply: &[u8]) -> anyhow::Result<()> {
    let rcode = reply[3] & 0x0f;
    let records = u16::from_be_bytes([reply[6], reply[7]]);
    if rcode != 0 || records == 0 {
        bail!(
            "{} answered with rcode {rcode} and {records} records",
            kind.label()
        );
    }
    Ok(())
}

#[derive(Default)]
struct Latency {
    /// Sorted.
    times: Vec<Duration>,
    lost: usize,
}

impl Latency {
    fn add(&mut self, more: Latency) {
        self.times.extend(more.times);
        self.times.sort();
        self.lost += more.lost;
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.times.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((self.times.len() as f64 - 1.0) * p).round() as usize;
        self.times[idx.min(self.times.len() - 1)]
    }

    fn max(&self) -> Duration {
        self.times.last().copied().unwrap_or_default()
    }
}

/// `count` queries from one client, each sent when the previous one was answered.
fn latency(server: &Server, packets: &[Vec<u8>], count: usize) -> anyhow::Result<Latency> {
    let socket = client_socket(Ipv4Addr::LOCALHOST, server.addr, Duration::from_secs(1))?;
    let mut out = Latency {
        times: Vec::with_capacity(count),
        lost: 0,
    };
    let mut buf = [0u8; 4096];
    let mut packet = Vec::with_capacity(512);
    for q in 0..count {
        let id = (q as u16).to_be_bytes();
        packet.clear();
        packet.extend_from_slice(&packets[q % packets.len()]);
        packet[..2].copy_from_slice(&id);
        let started = Instant::now();
        socket.send(&packet)?;
        loop {
            match socket.recv(&mut buf) {
                Ok(n) if n >= 12 && buf[..2] == id => {
                    out.times.push(started.elapsed());
                    check(server.kind, &buf[..n])?;
                    break;
                }
                // A late answer to a query counted lost.
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    out.lost += 1;
                    break;
                }
                Err(e) => return Err(e).context(format!("asking {}", server.kind.label())),
            }
        }
    }
    out.times.sort();
    Ok(out)
}

#[derive(Default)]
struct Throughput {
    answered: u64,
    /// Answers that were errors (SERVFAIL from a full forwarding budget, say).
    errors: u64,
    /// Windows re-sent after 100 ms without an answer.
    stalls: u64,
    seconds: f64,
    /// The server's CPU time (user + system) over the measured interval.
    cpu: f64,
}

impl Throughput {
    fn add(&mut self, more: &Throughput) {
        self.answered += more.answered;
        self.errors += more.errors;
        self.stalls += more.stalls;
        self.seconds += more.seconds;
        self.cpu += more.cpu;
    }

    fn qps(&self) -> f64 {
        self.answered as f64 / self.seconds
    }

    fn cpu_us_per_query(&self) -> f64 {
        if self.answered == 0 {
            return 0.0;
        }
        self.cpu * 1e6 / self.answered as f64
    }
}

/// `CLIENTS` clients with `WINDOW` queries in flight each, on one thread (so that the load
/// takes at most one core of the two and the server gets the other): warm-up, then the
/// answers of `measure` are counted.
fn throughput(
    server: &Server,
    packets: &Arc<Vec<Vec<u8>>>,
    warm: Duration,
    measure: Duration,
) -> anyhow::Result<Throughput> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let from = Instant::now() + warm;
    let until = from + measure;
    let (pid, addr, kind) = (server.pid(), server.addr, server.kind);
    runtime.block_on(async move {
        let cpu = tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            let before = cpu_seconds(pid);
            tokio::time::sleep_until(until.into()).await;
            Ok::<_, anyhow::Error>(cpu_seconds(pid)? - before?)
        });
        let mut clients = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            clients.spawn(client(c, addr, packets.clone(), kind, from, until));
        }
        let mut total = Throughput {
            answered: 0,
            errors: 0,
            stalls: 0,
            seconds: measure.as_secs_f64(),
            cpu: cpu.await??,
        };
        while let Some(done) = clients.join_next().await {
            let (answered, errors, stalls) = done??;
            total.answered += answered;
            total.errors += errors;
            total.stalls += stalls;
        }
        Ok(total)
    })
}

/// One client: from its own address 127.0.0.(2+c), keeps `WINDOW` queries in flight; returns
/// the answers and errors counted from `from` to `until`, and its stalls.
async fn client(
    c: u8,
    server: SocketAddr,
    packets: Arc<Vec<Vec<u8>>>,
    kind: Kind,
    from: Instant,
    until: Instant,
) -> anyhow::Result<(u64, u64, u64)> {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2 + c), 0)).await?;
    socket.connect(server).await?;
    let mut rng = fastrand::Rng::with_seed(u64::from(c));
    let mut next_id: u16 = 0;
    let mut in_flight: Vec<u16> = Vec::with_capacity(WINDOW);
    let mut packet = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    let (mut answered, mut errors, mut stalls) = (0u64, 0u64, 0u64);
    loop {
        while in_flight.len() < WINDOW {
            packet.clear();
            packet.extend_from_slice(&packets[rng.usize(..packets.len())]);
            packet[..2].copy_from_slice(&next_id.to_be_bytes());
            socket.send(&packet).await?;
            in_flight.push(next_id);
            next_id = next_id.wrapping_add(1);
        }
        if Instant::now() >= until {
            return Ok((answered, errors, stalls));
        }
        match tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 12 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let Some(at) = in_flight.iter().position(|&i| i == id) else {
                    continue;
                };
                in_flight.swap_remove(at);
                if Instant::now() >= from {
                    match check(kind, &buf[..n]) {
                        Ok(()) => answered += 1,
                        Err(_) => errors += 1,
                    }
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e).context(format!("asking {}", kind.label())),
            Err(_) => {
                // Lost queries (a full socket buffer): start a fresh window.
                stalls += 1;
                in_flight.clear();
            }
        }
    }
}

/// User + system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) start with the state, field 3.
    let after = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("/proc/PID/stat field")?
            .parse::<f64>()?)
    };
    // utime and stime (fields 14 and 15), in USER_HZ: 100 on Linux.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// A `Vm*` line of /proc/PID/status, KiB.
fn vm_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{key} of {pid}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("a number of KiB")?
        .parse()?)
}

/// RSS of a server just started with `pods` pods and asked 100 local (if any) and 100
/// forwarded names, so that both paths have run once.
fn memory(kind: Kind, pods: usize, upstream: SocketAddr, dnsmasq: &Path) -> anyhow::Result<u64> {
    let server = Server::start(kind, pods, upstream, dnsmasq)?;
    if pods > 0 {
        latency(&server, &queries(&local_names(pods)[..100])?, 100)?;
    }
    latency(&server, &queries(&forwarded_names())?, 100)?;
    std::thread::sleep(Duration::from_millis(200));
    vm_kib(server.pid(), "VmRSS:")
}

// --- the run --------------------------------------------------------------------------------

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// `20000` as `20,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn run() -> anyhow::Result<()> {
    let local_count: usize = env_or("BNT_BENCH_DNS_LOCAL", 20_000);
    let forwarded_count: usize = env_or("BNT_BENCH_DNS_FORWARDED", 5_000);
    let seconds: f64 = env_or("BNT_BENCH_DNS_SECONDS", 3.0);
    let measure = Duration::from_secs_f64(seconds);
    let warm = Duration::from_millis(300);

    let dnsmasq = find_dnsmasq();
    let mut kinds = vec![Kind::Bridgenet];
    match &dnsmasq {
        Some(_) => kinds.extend([
            Kind::Dnsmasq { cache: 0 },
            Kind::Dnsmasq {
                cache: DNSMASQ_DEFAULT_CACHE,
            },
        ]),
        None => eprintln!(
            "SKIP dnsmasq lines: no dnsmasq in PATH or /usr/sbin \
             (apt-get install dnsmasq-base, or scripts/bench-dns.sh)"
        ),
    }
    let dnsmasq = dnsmasq.unwrap_or_default();
    let upstream = start_upstream()?;
    let local = Arc::new(queries(&local_names(PODS))?);
    let forwarded = Arc::new(queries(&forwarded_names())?);

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "DNS: bridgenet's network resolver next to dnsmasq {}, one run, {cores} cores, \
         loopback, UDP, A queries",
        if kinds.len() > 1 {
            dnsmasq_version(&dnsmasq)
        } else {
            "(missing)".into()
        },
    );
    println!(
        "zone: {} pods of namespace {NAMESPACE} (pod-N and pod-N.{NAMESPACE}; alias svc-K on \
         every {ALIAS_EVERY}th pod); dnsmasq reads the same names from an --addn-hosts file",
        thousands(PODS)
    );
    println!(
        "forwarded: {FORWARDED_NAMES} names in turn to the same in-bench upstream on loopback, \
         which answers at once"
    );
    println!(
        "bridgenet: per-client rate limit {CLIENT_QPS} q/s for the bench (agent default \
         {AGENT_CLIENT_QPS}); it caches nothing, so dnsmasq cache-size=0 is the like-for-like \
         line and cache-size={DNSMASQ_DEFAULT_CACHE} (dnsmasq's default) answers repeated \
         forwarded names from its cache"
    );

    println!(
        "load average at the start: {} (the machine is shared; rounds spread a burst over all \
         servers)",
        loadavg()
    );

    let servers: Vec<Server> = kinds
        .iter()
        .map(|&k| Server::start(k, PODS, upstream, &dnsmasq))
        .collect::<anyhow::Result<_>>()?;
    // Latency, once with everything on one core and once with the server on another: on a VM a
    // wakeup across cores can cost more than either server's work, and left alone the
    // scheduler's placement (not the server) would decide the figure.
    let cpus = allowed_cpus()?;
    let placements: Vec<Placement> = match cpus.as_slice() {
        [a, b, ..] => vec![
            Placement::new("same core", *a, *a),
            Placement::new("other core", *a, *b),
        ],
        [a] => vec![Placement::new("same core", *a, *a)],
        [] => bail!("no CPU allowed to this process"),
    };
    let mut lat: Vec<(Kind, &'static str, Latency, Latency)> = Vec::new();
    for place in &placements {
        place.apply(&servers)?;
        for s in &servers {
            latency(s, &local, 2_000)?;
            latency(s, &forwarded, 500)?;
        }
        let first = lat.len();
        lat.extend(
            servers
                .iter()
                .map(|s| (s.kind, place.label, Latency::default(), Latency::default())),
        );
        // In rounds, each server in turn: a burst of load from elsewhere on the machine
        // (another build) then falls on every server's figures, not on one's.
        for _ in 0..ROUNDS {
            for (s, (_, _, l, f)) in servers.iter().zip(&mut lat[first..]) {
                l.add(latency(s, &local, local_count / ROUNDS)?);
                f.add(latency(s, &forwarded, forwarded_count / ROUNDS)?);
            }
        }
    }
    // Throughput and everything after: wherever the scheduler puts them.
    Placement::release(&cpus, &servers)?;
    let mut thr: Vec<(Kind, Throughput, Throughput)> = servers
        .iter()
        .map(|s| (s.kind, Throughput::default(), Throughput::default()))
        .collect();
    let slice = measure / u32::try_from(THROUGHPUT_ROUNDS).unwrap_or(1);
    for _ in 0..THROUGHPUT_ROUNDS {
        for (s, (_, l, f)) in servers.iter().zip(&mut thr) {
            l.add(&throughput(s, &local, warm, slice)?);
            f.add(&throughput(s, &forwarded, warm, slice)?);
        }
    }
    let loaded: Vec<(Kind, u64, u64)> = servers
        .iter()
        .map(|s| {
            Ok((
                s.kind,
                vm_kib(s.pid(), "VmRSS:")?,
                vm_kib(s.pid(), "VmHWM:")?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    drop(servers);
    let builds: Vec<(usize, Duration)> = MEMORY_PODS[1..]
        .iter()
        .map(|&pods| (pods, zone_build(pods)))
        .collect();
    let mut mem = Vec::new();
    for &k in &kinds {
        let rss = MEMORY_PODS
            .iter()
            .map(|&pods| memory(k, pods, upstream, &dnsmasq))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        mem.push((k, rss));
    }

    println!();
    println!(
        "latency, one client asking sequentially, µs: local names ({} queries), forwarded names \
         ({} queries), in {ROUNDS} rounds",
        thousands(local_count),
        thousands(forwarded_count)
    );
    for place in &placements {
        println!(
            "{}: client and upstream on core {}, server on core {}",
            place.label, place.client, place.server
        );
    }
    println!(
        "{:<24} {:<10} {:>9} {:>7} {:>7} {:>9} {:>7} {:>7} {:>5}",
        "server", "placement", "local p50", "p99", "max", "fwd p50", "p99", "max", "lost"
    );
    for (k, place, l, f) in &lat {
        println!(
            "{:<24} {:<10} {:>9} {:>7} {:>7} {:>9} {:>7} {:>7} {:>5}",
            k.label(),
            place,
            us(l.percentile(0.5)),
            us(l.percentile(0.99)),
            us(l.max()),
            us(f.percentile(0.5)),
            us(f.percentile(0.99)),
            us(f.max()),
            l.lost + f.lost
        );
    }
    println!();
    println!(
        "throughput, {CLIENTS} clients x {WINDOW} in flight, {seconds} s in {THROUGHPUT_ROUNDS} \
         rounds, each after {} s warm-up: queries answered a second and the server's CPU µs per \
         query",
        warm.as_secs_f64()
    );
    println!(
        "{:<24} {:>10} {:>8} {:>10} {:>8} {:>7}",
        "server", "local qps", "CPU µs", "fwd qps", "CPU µs", "stalls"
    );
    for (k, l, f) in &thr {
        println!(
            "{:<24} {:>10.0} {:>8.1} {:>10.0} {:>8.1} {:>7}",
            k.label(),
            l.qps(),
            l.cpu_us_per_query(),
            f.qps(),
            f.cpu_us_per_query(),
            l.stalls + f.stalls
        );
        if l.errors + f.errors > 0 {
            println!(
                "  {}: {} error answers (local {}, forwarded {})",
                k.label(),
                l.errors + f.errors,
                l.errors,
                f.errors
            );
        }
    }
    println!();
    println!(
        "memory, VmRSS MiB: started and asked 100 local + 100 forwarded names; after the runs \
         above ({} pods), and its peak",
        thousands(PODS)
    );
    println!(
        "{:<24} {:>8} {:>10} {:>11} {:>12} {:>6}",
        "server", "0 pods", "1,000 pods", "10,000 pods", "after runs", "peak"
    );
    for ((k, rss), (_, now, peak)) in mem.iter().zip(&loaded) {
        println!(
            "{:<24} {:>8} {:>10} {:>11} {:>12} {:>6}",
            k.label(),
            mib(rss[0]),
            mib(rss[1]),
            mib(rss[2]),
            mib(*now),
            mib(*peak)
        );
    }
    let builds: Vec<String> = builds
        .iter()
        .map(|(pods, took)| {
            format!(
                "{} pods {:.2} ms",
                thousands(*pods),
                took.as_secs_f64() * 1e3
            )
        })
        .collect();
    println!(
        "bridgenet's zone is built whole on every change of the network's endpoints: {}",
        builds.join(", ")
    );
    println!();
    for place in &placements {
        let row = |kind: Kind| {
            lat.iter()
                .find(|(k, p, _, _)| *k == kind && *p == place.label)
        };
        if let (Some((_, _, ol, of)), Some((_, _, rl, rf))) =
            (row(Kind::Bridgenet), row(Kind::Dnsmasq { cache: 0 }))
        {
            let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
            println!(
                "ratio bridgenet / dnsmasq cache-size=0, {}: latency local p50 {:.2} p99 {:.2}, \
                 forwarded p50 {:.2} p99 {:.2}",
                place.label,
                ratio(ol.percentile(0.5), rl.percentile(0.5)),
                ratio(ol.percentile(0.99), rl.percentile(0.99)),
                ratio(of.percentile(0.5), rf.percentile(0.5)),
                ratio(of.percentile(0.99), rf.percentile(0.99)),
            );
        }
    }
    if let (Some((_, ol, of)), Some((_, rl, rf))) = (thr.first(), thr.get(1)) {
        println!(
            "ratio bridgenet / dnsmasq cache-size=0: qps local {:.2}, forwarded {:.2}; \
             CPU per query local {:.2}, forwarded {:.2}",
            ol.qps() / rl.qps(),
            of.qps() / rf.qps(),
            ol.cpu_us_per_query() / rl.cpu_us_per_query(),
            of.cpu_us_per_query() / rf.cpu_us_per_query(),
        );
    }
    if let (Some((_, o)), Some((_, r))) = (mem.first(), mem.get(1)) {
        let grew = |v: &[u64], i: usize| mib(v[i].saturating_sub(v[0]));
        println!(
            "names' memory (RSS minus the empty server's): bridgenet +{} MiB with 1,000 pods, \
             +{} MiB with 10,000; dnsmasq +{} / +{} MiB",
            grew(o, 1),
            grew(o, 2),
            grew(r, 1),
            grew(r, 2)
        );
    }
    println!("load average at the end: {}", loadavg());
    Ok(())
}

/// The fastest of 10 builds of the zone of `pods` pods.
fn zone_build(pods: usize) -> Duration {
    let endpoints = endpoints(pods);
    (0..10)
        .map(|_| {
            let started = Instant::now();
            let zone = Zone::build(&endpoints);
            let took = started.elapsed();
            drop(std::hint::black_box(zone));
            took
        })
        .min()
        .unwrap_or_default()
}

/// Where the latency client (and the upstream, on its behalf) and the server run.
struct Placement {
    label: &'static str,
    client: usize,
    server: usize,
}

impl Placement {
    fn new(label: &'static str, client: usize, server: usize) -> Self {
        Placement {
            label,
            client,
            server,
        }
    }

    /// Pins this thread and the upstream's to the client's core, every thread of every
    /// server to the server's.
    fn apply(&self, servers: &[Server]) -> anyhow::Result<()> {
        let (client, server) = (cpu_set(&[self.client])?, cpu_set(&[self.server])?);
        pin_threads(std::process::id(), Some(UPSTREAM_THREAD), &client)?;
        sched_setaffinity(Pid::from_raw(0), &client)?;
        for s in servers {
            pin_threads(s.pid(), None, &server)?;
        }
        Ok(())
    }

    /// Lets everything run on every allowed core again.
    fn release(cpus: &[usize], servers: &[Server]) -> anyhow::Result<()> {
        let all = cpu_set(cpus)?;
        pin_threads(std::process::id(), Some(UPSTREAM_THREAD), &all)?;
        sched_setaffinity(Pid::from_raw(0), &all)?;
        for s in servers {
            pin_threads(s.pid(), None, &all)?;
        }
        Ok(())
    }
}

fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

fn cpu_set(cpus: &[usize]) -> anyhow::Result<CpuSet> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    Ok(set)
}

/// Pins the threads of process `pid` to `set`: all of them, or those named `only`.
fn pin_threads(pid: u32, only: Option<&str>, set: &CpuSet) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        if let Some(name) = only {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
        }
        let tid: i32 = entry.file_name().to_string_lossy().parse()?;
        match sched_setaffinity(Pid::from_raw(tid), set) {
            // A thread that ended meanwhile.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e).context(format!("pinning thread {tid} of {pid}")),
        }
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
