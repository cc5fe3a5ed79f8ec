//! What the resolver does with one query: answer it from the network's [`Zone`], refuse it, or
//! pass it upstream. Pure: no sockets, so every rule is tested here.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;

use super::zone::{Lookup, Zone};

/// TTL of the network's own records: short, so that a client caching an answer follows a pod
/// that was re-created elsewhere with another address within seconds (CoreDNS's Kubernetes
/// records use the same).
pub const TTL: u32 = 5;

/// The largest UDP response we send to a client that did not offer EDNS.
const PLAIN_UDP_LIMIT: usize = 512;
/// The EDNS payload size we offer and accept at most (the DNS flag day's safe value).
const EDNS_UDP_LIMIT: u16 = 1232;

/// Where a query that is not the network's goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The node's resolvers (`--dns-upstream`, default `/etc/resolv.conf`).
    Upstream,
    /// The cluster DNS service (`--cluster-dns`), for names of the cluster domain.
    Cluster,
}

/// How a query ended, the label of the queries metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered from the network's names (addresses, or none of the asked type).
    Answered,
    /// NXDOMAIN for a name the network does not have.
    NxDomain,
    /// Passed to a resolver upstream and its answer relayed.
    Forwarded,
    /// No upstream answered (SERVFAIL sent).
    UpstreamFailed,
    /// Refused: an internal network's name outside the cluster, a class or kind we do not
    /// serve.
    Refused,
    /// Not a query we can read (FORMERR sent when there was a header to answer).
    Malformed,
    /// Dropped: the client is over its rate, or too many queries are already upstream.
    Limited,
    /// Not answered: the client has no address of the network.
    Ignored,
}

impl Outcome {
    /// Every outcome, so that each series exists from the start.
    pub const ALL: [Outcome; 8] = [
        Outcome::Answered,
        Outcome::NxDomain,
        Outcome::Forwarded,
        Outcome::UpstreamFailed,
        Outcome::Refused,
        Outcome::Malformed,
        Outcome::Limited,
        Outcome::Ignored,
    ];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::NxDomain => "nxdomain",
            Outcome::Forwarded => "forwarded",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::Refused => "refused",
            Outcome::Malformed => "malformed",
            Outcome::Limited => "limited",
            Outcome::Ignored => "ignored",
        }
    }
}

/// The part of a network the resolver answers for.
#[derive(Clone, Debug)]
pub struct View<'a> {
    /// The network's names.
    pub zone: &'a Zone,
    /// The network's subnets (IPv4, and IPv6 on dual stack): reverse names inside them are
    /// answered here, never asked upstream.
    pub subnets: &'a [IpNet],
    /// An internal network: only cluster names are forwarded, and only to the cluster DNS.
    pub internal: bool,
    /// The cluster's DNS domain, lowercase without the trailing dot (`cluster.local`).
    pub cluster_domain: &'a str,
    /// Whether a cluster DNS is configured.
    pub has_cluster_dns: bool,
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send this response.
    Reply(Vec<u8>, Outcome),
    /// Relay the query, unchanged, to `route`. If the upstream does not know the name (or
    /// fails) and there is a `fallback`, send that instead; else the upstream's answer, or
    /// [`server_failure`].
    Forward {
        /// Where to.
        route: Route,
        /// The network's own answer for a name that is one of its names with a cluster
        /// search domain appended (see [`search_head`]).
        fallback: Option<Vec<u8>>,
    },
    /// Send nothing.
    Drop(Outcome),
}

/// Decides about `packet` from `client`. `udp` bounds the response size (a truncated answer
/// tells the client to ask again over TCP).
pub fn decide(packet: &[u8], client: IpAddr, view: &View<'_>, udp: bool) -> Decision {
    let query = match Message::from_vec(packet) {
        Ok(q) => q,
        Err(_) => return malformed(packet),
    };
    if query.message_type() != MessageType::Query {
        return Decision::Drop(Outcome::Malformed);
    }
    if query.op_code() != OpCode::Query {
        return reply(
            &query,
            ResponseCode::NotImp,
            Vec::new(),
            udp,
            Outcome::Refused,
        );
    }
    let [question] = query.queries() else {
        return reply(
            &query,
            ResponseCode::FormErr,
            Vec::new(),
            udp,
            Outcome::Malformed,
        );
    };
    if question.query_class() != DNSClass::IN {
        return reply(
            &query,
            ResponseCode::Refused,
            Vec::new(),
            udp,
            Outcome::Refused,
        );
    }
    let asked = question.name().clone();
    let name = normalize(&asked);
    let qtype = question.query_type();

    if let Ok(net) = asked.parse_arpa_name()
        && is_host(&net)
        && view.subnets.iter().any(|s| s.contains(&net.addr()))
    {
        // A reverse name of the network: ours to answer, whatever the type.
        let ip = net.addr();
        return match view.zone.name_of(ip) {
            Some(target) => {
                let answers = match (qtype, Name::from_ascii(format!("{target}."))) {
                    (RecordType::PTR | RecordType::ANY, Ok(target)) => vec![Record::from_rdata(
                        asked.clone(),
                        TTL,
                        RData::PTR(PTR(target)),
                    )],
                    _ => Vec::new(),
                };
                reply(
                    &query,
                    ResponseCode::NoError,
                    answers,
                    udp,
                    Outcome::Answered,
                )
            }
            None => reply(
                &query,
                ResponseCode::NXDomain,
                Vec::new(),
                udp,
                Outcome::NxDomain,
            ),
        };
    }

    let asker = view.zone.namespace_of(client);
    match view.zone.lookup(&name, asker) {
        Lookup::Found(addrs) => addresses(&query, &asked, &addrs, qtype, udp),
        Lookup::NoSuchName => reply(
            &query,
            ResponseCode::NXDomain,
            Vec::new(),
            udp,
            Outcome::NxDomain,
        ),
        Lookup::Elsewhere => {
            let in_cluster = name == view.cluster_domain
                || name
                    .strip_suffix(view.cluster_domain)
                    .is_some_and(|head| head.ends_with('.'));
            // `web.default.svc.cluster.local`: what a client with the cluster's search list
            // asks first for `web` (busybox never asks the bare name at all). The cluster keeps
            // precedence, so a Service of that name still wins; when the cluster does not know
            // the name, it is the network's pod.
            let fallback = in_cluster
                .then(|| search_head(&name, asker, view.cluster_domain))
                .flatten()
                .and_then(|head| match view.zone.lookup(head, asker) {
                    Lookup::Found(addrs) => match addresses(&query, &asked, &addrs, qtype, udp) {
                        Decision::Reply(bytes, _) => Some(bytes),
                        _ => None,
                    },
                    _ => None,
                });
            match (in_cluster && view.has_cluster_dns, view.internal, fallback) {
                (true, _, fallback) => Decision::Forward {
                    route: Route::Cluster,
                    fallback,
                },
                (false, false, fallback) => Decision::Forward {
                    route: Route::Upstream,
                    fallback,
                },
                // Docker's internal networks resolve their own names and nothing beyond.
                (false, true, Some(bytes)) => Decision::Reply(bytes, Outcome::Answered),
                (false, true, None) => reply(
                    &query,
                    ResponseCode::Refused,
                    Vec::new(),
                    udp,
                    Outcome::Refused,
                ),
            }
        }
    }
}

/// The name a cluster search domain was appended to: `web` of `web.<ns>.svc.<domain>` (the
/// asker's namespace), `svc.<domain>` or `<domain>` — the search list kubelet gives a pod.
fn search_head<'n>(name: &'n str, asker: Option<&str>, domain: &str) -> Option<&'n str> {
    let mut suffixes = Vec::with_capacity(3);
    if let Some(ns) = asker {
        suffixes.push(format!(".{ns}.svc.{domain}"));
    }
    suffixes.push(format!(".svc.{domain}"));
    suffixes.push(format!(".{domain}"));
    suffixes
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix.as_str()))
        .filter(|head| !head.is_empty())
}

/// The addresses of a name of the network, as A or AAAA records (no data for other types).
fn addresses(
    query: &Message,
    asked: &Name,
    addrs: &[IpAddr],
    qtype: RecordType,
    udp: bool,
) -> Decision {
    let answers = addrs
        .iter()
        .filter_map(|ip| match (*ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(v4))),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(asked.clone(), TTL, rdata))
        .collect();
    reply(
        query,
        ResponseCode::NoError,
        answers,
        udp,
        Outcome::Answered,
    )
}

/// Whether `answer` (an upstream's response) says the name does not exist.
pub fn is_nxdomain(answer: &[u8]) -> bool {
    answer.get(3).is_some_and(|flags| flags & 0x0f == 3)
}

/// SERVFAIL for a query no upstream answered (or the query itself when it cannot be read).
pub fn server_failure(packet: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    match reply(
        &query,
        ResponseCode::ServFail,
        Vec::new(),
        false,
        Outcome::UpstreamFailed,
    ) {
        Decision::Reply(bytes, _) => Some(bytes),
        _ => None,
    }
}

/// Lowercase, without the trailing dot.
fn normalize(name: &Name) -> String {
    let mut text = name.to_lowercase().to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text
}

/// A reverse name for one whole address (not a shorter `in-addr.arpa` zone name).
fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

fn reply(
    query: &Message,
    code: ResponseCode,
    answers: Vec<Record>,
    udp: bool,
    outcome: Outcome,
) -> Decision {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(outcome == Outcome::Answered || outcome == Outcome::NxDomain)
        .set_response_code(code);
    m.add_queries(query.queries().iter().cloned());
    let limit = match query.extensions() {
        Some(edns) => {
            let mut ours = Edns::new();
            ours.set_max_payload(EDNS_UDP_LIMIT);
            m.set_edns(ours);
            usize::from(edns.max_payload().clamp(512, EDNS_UDP_LIMIT))
        }
        None => PLAIN_UDP_LIMIT,
    };
    let full = {
        m.add_answers(answers);
        m.to_vec()
    };
    match full {
        Ok(bytes) if !udp || bytes.len() <= limit => Decision::Reply(bytes, outcome),
        _ => {
            // Too big for UDP (a shared alias with many holders): the client asks over TCP.
            m.take_answers();
            m.set_truncated(true);
            match m.to_vec() {
                Ok(bytes) => Decision::Reply(bytes, outcome),
                Err(_) => Decision::Drop(Outcome::Malformed),
            }
        }
    }
}

/// FORMERR for a packet with a readable header but an unreadable body; nothing otherwise.
fn malformed(packet: &[u8]) -> Decision {
    let (Some(&hi), Some(&lo)) = (packet.first(), packet.get(1)) else {
        return Decision::Drop(Outcome::Malformed);
    };
    // A response (QR set) is never answered: that is how reflection loops start.
    if packet.get(2).is_none_or(|flags| flags & 0x80 != 0) {
        return Decision::Drop(Outcome::Malformed);
    }
    let m = Message::error_msg(
        u16::from_be_bytes([hi, lo]),
        OpCode::Query,
        ResponseCode::FormErr,
    );
    match m.to_vec() {
        Ok(bytes) => Decision::Reply(bytes, Outcome::Malformed),
        Err(_) => Decision::Drop(Outcome::Malformed),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::dns::zone::tests::endpoint;
    use bridgenet_crds::v1alpha1::Endpoint;
    use hickory_proto::op::Query;

    fn zone() -> Zone {
        Zone::build(&[
            endpoint("shop", "web", "10.0.0.2", Some("fd00::2"), &["front"]),
            endpoint("shop", "db", "10.0.0.3", None, &[]),
        ])
    }

    fn subnets() -> Vec<IpNet> {
        vec!["10.0.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()]
    }

    fn view<'a>(zone: &'a Zone, subnets: &'a [IpNet], internal: bool) -> View<'a> {
        View {
            zone,
            subnets,
            internal,
            cluster_domain: "cluster.local",
            has_cluster_dns: true,
        }
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn ask(name: &str, qtype: RecordType, internal: bool) -> Result<Message, Decision> {
        let (zone, subnets) = (zone(), subnets());
        let client = "10.0.0.3".parse().unwrap();
        match decide(
            &query(name, qtype),
            client,
            &view(&zone, &subnets, internal),
            true,
        ) {
            Decision::Reply(bytes, _) => {
                let m = Message::from_vec(&bytes).unwrap();
                assert_eq!(m.id(), 4242);
                assert_eq!(m.message_type(), MessageType::Response);
                Ok(m)
            }
            other => Err(other),
        }
    }

    fn rdata(m: &Message) -> Vec<String> {
        m.answers().iter().map(|r| r.data().to_string()).collect()
    }

    #[test]
    fn the_networks_names() {
        let m = ask("web", RecordType::A, false).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(rdata(&m), ["10.0.0.2"]);
        assert_eq!(m.answers()[0].ttl(), TTL);
        assert_eq!(m.answers()[0].name().to_ascii(), "web.");
        let m = ask("WEB.shop.", RecordType::AAAA, false).unwrap();
        assert_eq!(rdata(&m), ["fd00::2"]);
        let m = ask("front", RecordType::A, false).unwrap();
        assert_eq!(rdata(&m), ["10.0.0.2"]);
        // The name exists but has no address of that family: NOERROR, no answer.
        let m = ask("db", RecordType::AAAA, false).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
        let m = ask("db", RecordType::MX, false).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn unknown_single_labels_are_nxdomain_here() {
        let m = ask("elsewhere", RecordType::A, false).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn reverse_names_of_the_network() {
        let m = ask("2.0.0.10.in-addr.arpa.", RecordType::PTR, false).unwrap();
        assert_eq!(rdata(&m), ["web.shop."]);
        let v6 = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(
            rdata(&ask(v6, RecordType::PTR, false).unwrap()),
            ["web.shop."]
        );
        // An address of the network nobody holds: NXDOMAIN, never asked upstream.
        let m = ask("99.0.0.10.in-addr.arpa.", RecordType::PTR, false).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        // Outside the network: upstream.
        assert_eq!(
            ask("8.8.8.8.in-addr.arpa.", RecordType::PTR, false).unwrap_err(),
            Decision::Forward {
                route: Route::Upstream,
                fallback: None
            }
        );
    }

    #[test]
    fn routing_of_other_names() {
        assert_eq!(
            ask("example.com.", RecordType::A, false).unwrap_err(),
            Decision::Forward {
                route: Route::Upstream,
                fallback: None
            }
        );
        assert_eq!(
            ask(
                "kubernetes.default.svc.cluster.local.",
                RecordType::A,
                false
            )
            .unwrap_err(),
            Decision::Forward {
                route: Route::Cluster,
                fallback: None
            }
        );
        // `db.blog` is not a pod of the network: upstream decides (and knows nothing of it).
        assert_eq!(
            ask("db.blog", RecordType::A, false).unwrap_err(),
            Decision::Forward {
                route: Route::Upstream,
                fallback: None
            }
        );
        // Internal networks: cluster names to the cluster DNS, nothing else leaves.
        assert_eq!(
            ask("kubernetes.default.svc.cluster.local.", RecordType::A, true).unwrap_err(),
            Decision::Forward {
                route: Route::Cluster,
                fallback: None
            }
        );
        let m = ask("example.com.", RecordType::A, true).unwrap();
        assert_eq!(m.response_code(), ResponseCode::Refused);
        // `notcluster.local` is not under `cluster.local`.
        assert_eq!(
            ask("notcluster.local.", RecordType::A, false).unwrap_err(),
            Decision::Forward {
                route: Route::Upstream,
                fallback: None
            }
        );
    }

    #[test]
    fn cluster_search_forms_fall_back_to_the_networks_names() {
        let (zone, subnets) = (zone(), subnets());
        let client = "10.0.0.3".parse().unwrap(); // db, namespace shop
        for (internal, has_cluster_dns) in [(false, true), (false, false), (true, true)] {
            let mut v = view(&zone, &subnets, internal);
            v.has_cluster_dns = has_cluster_dns;
            for name in [
                "web.shop.svc.cluster.local.",
                "web.svc.cluster.local.",
                "web.cluster.local.",
                "front.shop.svc.cluster.local.",
                "web.shop.svc.cluster.local.",
            ] {
                let Decision::Forward {
                    fallback: Some(bytes),
                    ..
                } = decide(&query(name, RecordType::A), client, &v, true)
                else {
                    panic!("{name}: no fallback ({internal}, {has_cluster_dns})")
                };
                let m = Message::from_vec(&bytes).unwrap();
                assert_eq!(rdata(&m), ["10.0.0.2"], "{name}");
                assert_eq!(m.answers()[0].name().to_ascii(), name);
            }
        }
        // Names that are not the network's get no fallback; an internal network without a
        // cluster DNS answers its own at once and refuses the rest.
        let v = view(&zone, &subnets, false);
        assert_eq!(
            decide(
                &query("nobody.shop.svc.cluster.local.", RecordType::A),
                client,
                &v,
                true
            ),
            Decision::Forward {
                route: Route::Cluster,
                fallback: None
            }
        );
        let mut v = view(&zone, &subnets, true);
        v.has_cluster_dns = false;
        assert!(matches!(
            decide(
                &query("web.shop.svc.cluster.local.", RecordType::A),
                client,
                &v,
                true
            ),
            Decision::Reply(_, Outcome::Answered)
        ));
        assert!(matches!(
            decide(
                &query("nobody.shop.svc.cluster.local.", RecordType::A),
                client,
                &v,
                true
            ),
            Decision::Reply(_, Outcome::Refused)
        ));
        assert!(is_nxdomain(&[0, 0, 0x81, 0x83]) && !is_nxdomain(&[0, 0, 0x81, 0x80]));
    }

    #[test]
    fn without_cluster_dns_cluster_names_go_upstream() {
        let (zone, subnets) = (zone(), subnets());
        let mut v = view(&zone, &subnets, false);
        v.has_cluster_dns = false;
        let q = query("kubernetes.default.svc.cluster.local.", RecordType::A);
        let client = "10.0.0.3".parse().unwrap();
        assert_eq!(
            decide(&q, client, &v, true),
            Decision::Forward {
                route: Route::Upstream,
                fallback: None
            }
        );
        v.internal = true;
        assert!(matches!(
            decide(&q, client, &v, true),
            Decision::Reply(_, Outcome::Refused)
        ));
    }

    #[test]
    fn malformed_and_odd_packets() {
        let (zone, subnets) = (zone(), subnets());
        let v = view(&zone, &subnets, false);
        let client = "10.0.0.3".parse().unwrap();
        assert_eq!(
            decide(&[1], client, &v, true),
            Decision::Drop(Outcome::Malformed)
        );
        // A readable header with garbage after it: FORMERR with the same id.
        let mut bad = query("web", RecordType::A);
        bad.truncate(14);
        match decide(&bad, client, &v, true) {
            Decision::Reply(bytes, Outcome::Malformed) => {
                let m = Message::from_vec(&bytes).unwrap();
                assert_eq!((m.id(), m.response_code()), (4242, ResponseCode::FormErr));
            }
            other => panic!("{other:?}"),
        }
        // A response is never answered.
        let mut response = Message::from_vec(&query("web", RecordType::A)).unwrap();
        response.set_message_type(MessageType::Response);
        assert_eq!(
            decide(&response.to_vec().unwrap(), client, &v, true),
            Decision::Drop(Outcome::Malformed)
        );
        // Two questions.
        let mut two = Message::from_vec(&query("web", RecordType::A)).unwrap();
        two.add_query(Query::query(Name::from_ascii("db").unwrap(), RecordType::A));
        assert!(matches!(
            decide(&two.to_vec().unwrap(), client, &v, true),
            Decision::Reply(_, Outcome::Malformed)
        ));
        assert!(server_failure(&query("x.example.", RecordType::A)).is_some());
    }

    #[test]
    fn big_answers_are_truncated_over_udp_only() {
        let eps: Vec<Endpoint> = (0..60)
            .map(|i| {
                endpoint(
                    "ns",
                    &format!("p{i}"),
                    &format!("10.0.0.{}", i + 10),
                    None,
                    &["many"],
                )
            })
            .collect();
        let zone = Zone::build(&eps);
        let subnets = subnets();
        let v = view(&zone, &subnets, false);
        let client = "10.0.0.10".parse().unwrap();
        let q = query("many", RecordType::A);
        let Decision::Reply(udp, _) = decide(&q, client, &v, true) else {
            panic!()
        };
        let m = Message::from_vec(&udp).unwrap();
        assert!(m.truncated() && m.answers().is_empty());
        let Decision::Reply(tcp, _) = decide(&q, client, &v, false) else {
            panic!()
        };
        assert_eq!(Message::from_vec(&tcp).unwrap().answers().len(), 60);
    }
}
