//! Passing queries that are not the network's to the resolvers upstream: the node's own
//! (`--dns-upstream`, by default the nameservers of `/etc/resolv.conf`) or the cluster DNS
//! (`--cluster-dns`). The query is relayed as the client sent it, over the client's transport,
//! from a socket of its own, so an answer can only be the answer to it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::answer::Route;

/// Time one upstream gets to answer before the next is tried.
const PER_SERVER: Duration = Duration::from_secs(2);
/// Queries upstream at once, for the whole agent: beyond it, a query is answered SERVFAIL at
/// once rather than queued, so a flood cannot hold memory or sockets.
pub const MAX_IN_FLIGHT: usize = 512;

/// Why a query could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No resolver is configured for the route.
    #[error("no {0:?} resolver is configured")]
    NoServer(Route),
    /// Too many queries upstream already.
    #[error("{MAX_IN_FLIGHT} queries are already upstream")]
    Busy,
    /// Every resolver failed or timed out; the last error is kept.
    #[error("no upstream resolver answered ({tried} tried): {last}")]
    NoAnswer {
        /// How many were tried.
        tried: usize,
        /// What the last one did.
        last: String,
    },
}

/// The resolvers queries are forwarded to.
#[derive(Clone, Debug)]
pub struct Upstreams {
    general: Vec<SocketAddr>,
    cluster: Vec<SocketAddr>,
    in_flight: Arc<Semaphore>,
}

impl Upstreams {
    /// Forwarding to `general` for other names and to `cluster` for the cluster domain's.
    pub fn new(general: Vec<SocketAddr>, cluster: Vec<SocketAddr>) -> Self {
        Upstreams {
            general,
            cluster,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Whether a cluster DNS is configured.
    pub fn has_cluster(&self) -> bool {
        !self.cluster.is_empty()
    }

    /// The resolvers of `route`.
    pub fn servers(&self, route: Route) -> &[SocketAddr] {
        match route {
            Route::Upstream => &self.general,
            Route::Cluster => &self.cluster,
        }
    }

    /// Relays `query` to the resolvers of `route` in turn until one answers it; `tcp` picks
    /// the transport (the client's).
    pub async fn forward(
        &self,
        route: Route,
        query: &[u8],
        tcp: bool,
    ) -> Result<Vec<u8>, UpstreamError> {
        let servers = self.servers(route);
        if servers.is_empty() {
            return Err(UpstreamError::NoServer(route));
        }
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| UpstreamError::Busy)?;
        let mut last = String::new();
        for server in servers {
            let attempt = if tcp {
                tokio::time::timeout(PER_SERVER, over_tcp(*server, query)).await
            } else {
                tokio::time::timeout(PER_SERVER, over_udp(*server, query)).await
            };
            match attempt {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = format!("{server}: {e}"),
                Err(_) => last = format!("{server}: no answer in {PER_SERVER:?}"),
            }
        }
        Err(UpstreamError::NoAnswer {
            tried: servers.len(),
            last,
        })
    }
}

async fn over_udp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    // Room for the largest datagram, but neither zeroed nor touched beyond what arrives:
    // zeroing 64 KiB per query cost more CPU than the rest of a forward's user-space work,
    // and kept 64 KiB resident per query in flight.
    let mut buf = Vec::with_capacity(65535);
    loop {
        buf.clear();
        socket.recv_buf(&mut buf).await?;
        // A connected socket only hears `server`; still, only the answer to this query is one.
        if answers(query, &buf) {
            return Ok(buf);
        }
    }
}

async fn over_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await?;
    if !answers(query, &answer) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the answer is not for this query",
        ));
    }
    Ok(answer)
}

/// `answer` is a response with the query's ID.
fn answers(query: &[u8], answer: &[u8]) -> bool {
    answer.len() >= 12 && query.len() >= 2 && answer[..2] == query[..2] && answer[2] & 0x80 != 0
}

/// `IP` or `IP:PORT` (`[v6]:PORT`), port 53 by default.
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{text:?} is not an address or address:port of a DNS server"))
}

/// The `nameserver` lines of a resolv.conf, port 53; link-local IPv6 ones with a zone are
/// skipped (the agent cannot tell which link from here).
pub fn resolv_conf_servers(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path)?;
    Ok(nameservers(&text))
}

fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn servers_from_flags_and_resolv_conf() {
        assert_eq!(
            parse_server("10.96.0.10").unwrap(),
            "10.96.0.10:53".parse().unwrap()
        );
        assert_eq!(
            parse_server("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_server("[fd00::1]:54").unwrap(),
            "[fd00::1]:54".parse().unwrap()
        );
        assert!(parse_server("dns.example").is_err());
        let conf = "# generated\nsearch example\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n\
                    nameserver 2001:db8::53\noptions ndots:5\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn relays_over_udp_and_tcp_and_fails_over() {
        // A fake upstream that answers every query with its ID and QR set.
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp_addr = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let mut answer = buf[..n].to_vec();
                answer[2] |= 0x80;
                let _ = udp.send_to(&answer, from).await;
            }
        });
        let tcp = tokio::net::TcpListener::bind(udp_addr).await.unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let len = s.read_u16().await.unwrap();
                let mut q = vec![0u8; usize::from(len)];
                s.read_exact(&mut q).await.unwrap();
                q[2] |= 0x80;
                s.write_all(&len.to_be_bytes()).await.unwrap();
                s.write_all(&q).await.unwrap();
            }
        });
        // A dead one first: closed port (UDP gets ICMP refused, TCP a reset).
        let dead = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let ups = Upstreams::new(vec![dead, udp_addr], Vec::new());
        let query = [0xab, 0xcd, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for tcp in [false, true] {
            let answer = ups.forward(Route::Upstream, &query, tcp).await.unwrap();
            assert_eq!(&answer[..2], &[0xab, 0xcd]);
            assert!(answer[2] & 0x80 != 0);
        }
        assert!(matches!(
            ups.forward(Route::Cluster, &query, false).await,
            Err(UpstreamError::NoServer(Route::Cluster))
        ));
    }
}
