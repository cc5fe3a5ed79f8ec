//! The sockets: UDP and TCP port 53 on each gateway address of a network, answering only clients
//! of that network, at a bounded rate per client, with bounded work upstream.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::answer::{self, Decision, Outcome, View};
use super::upstream::Upstreams;
use super::zone::Zone;
use crate::metrics;

/// TCP connections one listener serves at once.
const MAX_TCP_CONNECTIONS: usize = 128;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What a network's listeners answer from; replaced whole when the network's endpoints or
/// spec change.
#[derive(Clone, Debug, Default)]
pub struct NetworkState {
    /// The BridgeNetwork, for metrics.
    pub network: String,
    /// Its names.
    pub zone: Zone,
    /// Its subnets: a client must have an address in one.
    pub subnets: Vec<IpNet>,
    /// No forwarding beyond the cluster DNS.
    pub internal: bool,
}

/// A network's current state, shared by its listeners.
pub type Shared = Arc<RwLock<Arc<NetworkState>>>;

fn current(shared: &Shared) -> Arc<NetworkState> {
    // Writers replace the Arc in one assignment: a poisoned lock holds no torn state.
    shared
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Everything the listeners of all networks share.
#[derive(Debug)]
pub struct Resolver {
    upstreams: Upstreams,
    cluster_domain: String,
    limiter: Mutex<RateLimiter>,
}

impl Resolver {
    /// A resolver forwarding to `upstreams`, with `cluster_domain` (e.g. `cluster.local`)
    /// routed to the cluster DNS, each client allowed `rate` queries a second (bursts of
    /// twice that).
    pub fn new(upstreams: Upstreams, cluster_domain: &str, rate: u32) -> Self {
        Resolver {
            upstreams,
            cluster_domain: cluster_domain.trim_end_matches('.').to_ascii_lowercase(),
            limiter: Mutex::new(RateLimiter::new(rate)),
        }
    }

    fn allow(&self, client: IpAddr) -> bool {
        self.limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow(client, Instant::now())
    }

    /// Answers one query of `client` (already checked to be of the network): the response
    /// to send, if any, and how the query ended.
    pub async fn handle(
        &self,
        state: &NetworkState,
        packet: &[u8],
        client: IpAddr,
        tcp: bool,
    ) -> (Option<Vec<u8>>, Outcome) {
        let view = View {
            zone: &state.zone,
            subnets: &state.subnets,
            internal: state.internal,
            cluster_domain: &self.cluster_domain,
            has_cluster_dns: self.upstreams.has_cluster(),
        };
        match answer::decide(packet, client, &view, !tcp) {
            Decision::Reply(bytes, outcome) => (Some(bytes), outcome),
            Decision::Drop(outcome) => (None, outcome),
            Decision::Forward { route, fallback } => {
                match (self.upstreams.forward(route, packet, tcp).await, fallback) {
                    (Ok(bytes), Some(local)) if answer::is_nxdomain(&bytes) => {
                        (Some(local), Outcome::Answered)
                    }
                    (Ok(bytes), _) => (Some(bytes), Outcome::Forwarded),
                    (Err(_), Some(local)) => (Some(local), Outcome::Answered),
                    (Err(e), None) => {
                        tracing::debug!(network = %state.network, error = %e, "forwarding a query");
                        (answer::server_failure(packet), Outcome::UpstreamFailed)
                    }
                }
            }
        }
    }
}

/// A token bucket per client address, in a map of bounded size.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    burst: f64,
    clients: HashMap<IpAddr, (f64, Instant)>,
}

/// Clients remembered at most; beyond it, the full (idle) buckets are forgotten first.
const MAX_CLIENTS: usize = 16_384;

impl RateLimiter {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimiter {
            rate,
            burst: rate * 2.0,
            clients: HashMap::new(),
        }
    }

    fn allow(&mut self, client: IpAddr, now: Instant) -> bool {
        if self.clients.len() >= MAX_CLIENTS && !self.clients.contains_key(&client) {
            let (rate, burst) = (self.rate, self.burst);
            self.clients.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            if self.clients.len() >= MAX_CLIENTS {
                self.clients.clear();
            }
        }
        let (tokens, at) = self.clients.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The UDP and TCP sockets of one address; closed when dropped.
#[derive(Debug)]
pub struct Listener {
    /// Where it listens.
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A socket bound to `addr` even before the address is on the bridge (`IP_FREEBIND`): the
/// data plane may add the gateway after the resolver starts, or re-create the bridge.
fn bound(addr: SocketAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    socket.set_reuse_address(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Listens on `addr` (UDP and TCP) for the network of `shared`. Must be called inside the
/// tokio runtime.
pub fn listen(addr: SocketAddr, shared: Shared, resolver: Arc<Resolver>) -> io::Result<Listener> {
    let udp = bound(addr, Type::DGRAM, Protocol::UDP)?;
    let udp = Arc::new(UdpSocket::from_std(udp.into())?);
    // Port 0 (tests): TCP takes the port UDP got.
    let addr = udp.local_addr()?;
    let tcp = bound(addr, Type::STREAM, Protocol::TCP)?;
    tcp.listen(128)?;
    let tcp = TcpListener::from_std(tcp.into())?;
    let tasks = vec![
        tokio::spawn(serve_udp(udp, shared.clone(), resolver.clone())),
        tokio::spawn(serve_tcp(tcp, shared, resolver)),
    ];
    Ok(Listener { addr, tasks })
}

/// Whether `client` may be answered at all: it has an address of the network. Anyone else
/// (the underlay, the host, another network's pods) gets silence, so the resolver is no open
/// resolver and does not tell who is on the network.
fn member(state: &NetworkState, client: IpAddr) -> bool {
    state.subnets.iter().any(|s| s.contains(&client))
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Shared, resolver: Arc<Resolver>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // ICMP errors of earlier sends surface here; the socket itself is fine.
                tracing::debug!(error = %e, "receiving a DNS query");
                continue;
            }
        };
        let state = current(&shared);
        let client = from.ip().to_canonical();
        if !member(&state, client) {
            metrics::dns_query(&state.network, Outcome::Ignored);
            continue;
        }
        if !resolver.allow(client) {
            metrics::dns_query(&state.network, Outcome::Limited);
            continue;
        }
        let packet = buf[..n].to_vec();
        let (socket, resolver) = (socket.clone(), resolver.clone());
        // Local answers take microseconds; forwarded ones wait on the upstream, off this loop.
        tokio::spawn(async move {
            let (reply, outcome) = resolver.handle(&state, &packet, client, false).await;
            metrics::dns_query(&state.network, outcome);
            if let Some(reply) = reply
                && let Err(e) = socket.send_to(&reply, from).await
            {
                tracing::debug!(%from, error = %e, "sending a DNS answer");
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Shared, resolver: Arc<Resolver>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "accepting a DNS connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let client = from.ip().to_canonical();
        let state = current(&shared);
        if !member(&state, client) {
            metrics::dns_query(&state.network, Outcome::Ignored);
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::dns_query(&state.network, Outcome::Limited);
            continue;
        };
        let (shared, resolver) = (shared.clone(), resolver.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_connection(stream, client, &shared, &resolver).await {
                tracing::debug!(%from, error = %e, "DNS over TCP");
            }
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    client: IpAddr,
    shared: &Shared,
    resolver: &Resolver,
) -> io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len,
            // Idle, or the client closed: either ends the connection.
            Ok(Err(_)) | Err(_) => return Ok(()),
        };
        let mut packet = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "query body"))??;
        let state = current(shared);
        if !resolver.allow(client) {
            metrics::dns_query(&state.network, Outcome::Limited);
            return Ok(());
        }
        let (reply, outcome) = resolver.handle(&state, &packet, client, true).await;
        metrics::dns_query(&state.network, outcome);
        let Some(reply) = reply else {
            return Ok(());
        };
        let len = u16::try_from(reply.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "answer too long"))?;
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::dns::upstream::Upstreams;
    use crate::dns::zone::tests::endpoint;
    use bridgenet_crds::v1alpha1::Endpoint;
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    async fn ask_udp(from: &str, server: SocketAddr, q: &[u8]) -> Option<Message> {
        let socket = UdpSocket::bind(format!("{from}:0")).await.unwrap();
        socket.send_to(q, server).await.unwrap();
        let mut buf = [0u8; 4096];
        let got = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await;
        got.ok()
            .map(|n| Message::from_vec(&buf[..n.unwrap()]).unwrap())
    }

    async fn ask_tcp(server: SocketAddr, q: &[u8]) -> Message {
        let mut s = TcpStream::connect(server).await.unwrap();
        let len = u16::try_from(q.len()).unwrap();
        s.write_all(&len.to_be_bytes()).await.unwrap();
        s.write_all(q).await.unwrap();
        let n = s.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(n)];
        s.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    }

    /// The whole path over real sockets on loopback: members answered over UDP and TCP, names
    /// of the network and forwarded ones, a changed zone seen at once, strangers ignored.
    #[tokio::test]
    async fn answers_members_over_udp_and_tcp_and_ignores_strangers() {
        // The upstream: answers everything with its ID and QR set, and an empty body.
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = up.recv_from(&mut buf).await {
                let mut q = Message::from_vec(&buf[..n]).unwrap();
                q.set_message_type(hickory_proto::op::MessageType::Response)
                    .set_response_code(ResponseCode::NXDomain);
                let _ = up.send_to(&q.to_vec().unwrap(), from).await;
            }
        });
        let resolver = Arc::new(Resolver::new(
            Upstreams::new(vec![up_addr], Vec::new()),
            "cluster.local",
            100,
        ));
        // The network is 127.0.0.0/30: 127.0.0.9 is a stranger.
        let state = |eps: &[Endpoint]| {
            Arc::new(NetworkState {
                network: "red".into(),
                zone: Zone::build(eps),
                subnets: vec!["127.0.0.0/30".parse().unwrap()],
                internal: false,
            })
        };
        let shared: Shared = Arc::new(RwLock::new(state(&[endpoint(
            "default",
            "web",
            "127.0.0.2",
            None,
            &["db"],
        )])));
        let listener = listen("127.0.0.1:0".parse().unwrap(), shared.clone(), resolver).unwrap();
        let server = listener.addr;
        assert_ne!(server.port(), 0);

        let m = ask_udp("127.0.0.2", server, &query(1, "web."))
            .await
            .unwrap();
        assert_eq!(m.answers()[0].data().to_string(), "127.0.0.2");
        let m = ask_tcp(server, &query(2, "db.")).await;
        assert_eq!(m.answers()[0].data().to_string(), "127.0.0.2");
        let m = ask_udp("127.0.0.2", server, &query(3, "nobody."))
            .await
            .unwrap();
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        // Forwarded: the upstream's answer, relayed.
        let m = ask_udp("127.0.0.2", server, &query(4, "www.example."))
            .await
            .unwrap();
        assert_eq!((m.id(), m.response_code()), (4, ResponseCode::NXDomain));
        assert!(!m.authoritative(), "the upstream's answer, not ours");
        // A stranger gets nothing at all.
        assert!(
            ask_udp("127.0.0.9", server, &query(5, "web."))
                .await
                .is_none()
        );
        // The zone changes: the next query sees it.
        *shared.write().unwrap() = state(&[endpoint("default", "api", "127.0.0.3", None, &[])]);
        let m = ask_udp("127.0.0.2", server, &query(6, "web."))
            .await
            .unwrap();
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        let m = ask_udp("127.0.0.2", server, &query(7, "api."))
            .await
            .unwrap();
        assert_eq!(m.answers()[0].data().to_string(), "127.0.0.3");
        // Closed with the listener.
        drop(listener);
        tokio::task::yield_now().await;
        assert!(
            ask_udp("127.0.0.2", server, &query(8, "api."))
                .await
                .is_none()
        );
    }

    #[test]
    fn rate_per_client_with_bounded_memory() {
        let mut limiter = RateLimiter::new(10);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        // A burst of twice the rate, then nothing until tokens come back.
        assert_eq!((0..30).filter(|_| limiter.allow(a, t0)).count(), 20);
        assert!(limiter.allow(b, t0), "another client has its own bucket");
        assert!(!limiter.allow(a, t0));
        assert!(limiter.allow(a, t0 + Duration::from_millis(150)));
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            limiter.allow(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(limiter.clients.len() <= MAX_CLIENTS);
    }
}
