//! Port publishing as users write it (`-p`, docker's grammar) and the host-side checks
//! that a host port is free before a container starts.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One published port as asked for: the host port may still be open (ephemeral) or a
/// range to pick from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMappingSpec {
    /// None: every host address.
    pub host_ip: Option<Ipv4Addr>,
    /// None: an ephemeral port; Some((a, b)): the first free port in a..=b (a == b for
    /// a fixed port).
    pub host_ports: Option<(u16, u16)>,
    pub container_port: u16,
    pub proto: Proto,
}

/// One published port with its host port decided: what the rules are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl fmt::Display for PortMapping {
    /// `berth port` style: "80/tcp -> 0.0.0.0:8080".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(
            f,
            "{}/{} -> {ip}:{}",
            self.container_port, self.proto, self.host_port
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("invalid port mapping {spec:?}: {reason}")]
    Invalid { spec: String, reason: String },
    #[error("host port {port}/{proto} on {ip} is already in use: {source}")]
    InUse {
        ip: Ipv4Addr,
        port: u16,
        proto: Proto,
        #[source]
        source: std::io::Error,
    },
    #[error("no free host port in {start}-{end}/{proto} on {ip}")]
    RangeFull {
        ip: Ipv4Addr,
        start: u16,
        end: u16,
        proto: Proto,
    },
    #[error("picking an ephemeral host port for {port}/{proto} on {ip}: {source}")]
    Ephemeral {
        ip: Ipv4Addr,
        port: u16,
        proto: Proto,
        #[source]
        source: std::io::Error,
    },
}

/// Parses one `-p` value: `[hostip:][hostport:]containerport[/proto]`, where either
/// port may be a range `a-b`, `hostip::containerport` asks for an ephemeral port on
/// that address, and host port 0 or absent means ephemeral. Ranges of equal length map
/// port to port; a host range with one container port means "any free port of it".
pub fn parse_port_spec(s: &str) -> Result<Vec<PortMappingSpec>, PortError> {
    let bad = |reason: &str| PortError::Invalid {
        spec: s.to_string(),
        reason: reason.to_string(),
    };
    let (rest, proto) = match s.rsplit_once('/') {
        Some((rest, "tcp")) => (rest, Proto::Tcp),
        Some((rest, "udp")) => (rest, Proto::Udp),
        Some((_, other)) => {
            return Err(bad(&format!(
                "unsupported protocol {other:?} (use tcp or udp)"
            )))
        }
        None => (s, Proto::Tcp),
    };
    if rest.starts_with('[') {
        return Err(bad("IPv6 host addresses are not supported"));
    }
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c] => (None, None, *c),
        [h, c] => (None, Some(*h), *c),
        [ip, h, c] => (Some(*ip), Some(*h), *c),
        _ => return Err(bad("too many ':' (IPv6 host addresses are not supported)")),
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(ip) => {
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| bad(&format!("host address {ip:?} is not an IPv4 address")))?;
            (!ip.is_unspecified()).then_some(ip)
        }
    };
    let (c_start, c_end) =
        parse_range(container).map_err(|r| bad(&format!("container port: {r}")))?;
    if c_start == 0 {
        return Err(bad("container port must not be 0"));
    }
    let host = match host {
        None | Some("") => None,
        Some(h) => Some(parse_range(h).map_err(|r| bad(&format!("host port: {r}")))?),
    };
    let spec = |host_ports, container_port| PortMappingSpec {
        host_ip,
        host_ports,
        container_port,
        proto,
    };
    let n_container = c_end - c_start + 1;
    Ok(match host {
        // ephemeral, one per container port
        None | Some((0, 0)) => (c_start..=c_end).map(|c| spec(None, c)).collect(),
        Some((0, _)) => return Err(bad("host port range must not start at 0")),
        Some((h_start, h_end)) if h_end - h_start + 1 == n_container => (c_start..=c_end)
            .zip(h_start..=h_end)
            .map(|(c, h)| spec(Some((h, h)), c))
            .collect(),
        Some((h_start, h_end)) if n_container == 1 => vec![spec(Some((h_start, h_end)), c_start)],
        Some(_) => return Err(bad("host and container port ranges differ in length")),
    })
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number (0-65535)"))
    };
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if start > end {
        return Err(format!("range {s:?} ends before it starts"));
    }
    Ok((start, end))
}

/// Fails if a host process already holds `port` (checked by binding it, as docker does).
pub fn check_host_port_free(
    host_ip: Option<Ipv4Addr>,
    port: u16,
    proto: Proto,
) -> Result<(), PortError> {
    let ip = host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    try_bind(ip, port, proto)
        .map(drop)
        .map_err(|source| PortError::InUse {
            ip,
            port,
            proto,
            source,
        })
}

/// Decides the host port of every spec: fixed ports must be free, ranges give their first
/// free port, ephemeral ones are picked by the kernel (bind to port 0). `taken` are host
/// ports already mapped by berth (they look free to bind() since DNAT does not bind).
pub fn resolve_ports(
    specs: &[PortMappingSpec],
    taken: &dyn Fn(Option<Ipv4Addr>, u16, Proto) -> bool,
) -> Result<Vec<PortMapping>, PortError> {
    let mut out: Vec<PortMapping> = Vec::with_capacity(specs.len());
    for spec in specs {
        let ip = spec.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let used = |port: u16, out: &[PortMapping]| {
            taken(spec.host_ip, port, spec.proto)
                || out
                    .iter()
                    .any(|m| m.host_port == port && m.proto == spec.proto)
        };
        let host_port = match spec.host_ports {
            Some((p, q)) if p == q => {
                if used(p, &out) {
                    return Err(PortError::InUse {
                        ip,
                        port: p,
                        proto: spec.proto,
                        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
                    });
                }
                check_host_port_free(spec.host_ip, p, spec.proto)?;
                p
            }
            Some((start, end)) => (start..=end)
                .find(|&p| !used(p, &out) && try_bind(ip, p, spec.proto).is_ok())
                .ok_or(PortError::RangeFull {
                    ip,
                    start,
                    end,
                    proto: spec.proto,
                })?,
            None => pick_ephemeral(ip, spec, &out, &used)?,
        };
        out.push(PortMapping {
            host_ip: spec.host_ip,
            host_port,
            container_port: spec.container_port,
            proto: spec.proto,
        });
    }
    Ok(out)
}

fn pick_ephemeral(
    ip: Ipv4Addr,
    spec: &PortMappingSpec,
    out: &[PortMapping],
    used: &dyn Fn(u16, &[PortMapping]) -> bool,
) -> Result<u16, PortError> {
    let err = |source| PortError::Ephemeral {
        ip,
        port: spec.container_port,
        proto: spec.proto,
        source,
    };
    // Bounded: the kernel rarely hands out a port berth already maps.
    for _ in 0..64 {
        let port = try_bind(ip, 0, spec.proto).map_err(err)?;
        if !used(port, out) {
            return Ok(port);
        }
    }
    Err(err(std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

/// Binds (and immediately closes) a socket, returning the bound port.
fn try_bind(ip: Ipv4Addr, port: u16, proto: Proto) -> std::io::Result<u16> {
    let addr = SocketAddrV4::new(ip, port);
    match proto {
        Proto::Tcp => TcpListener::bind(addr)?.local_addr().map(|a| a.port()),
        Proto::Udp => UdpSocket::bind(addr)?.local_addr().map(|a| a.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(
        host_ip: Option<&str>,
        host_ports: Option<(u16, u16)>,
        c: u16,
        proto: Proto,
    ) -> PortMappingSpec {
        PortMappingSpec {
            host_ip: host_ip.map(|s| s.parse().unwrap()),
            host_ports,
            container_port: c,
            proto,
        }
    }

    #[test]
    fn docker_grammar() {
        use Proto::*;
        let cases: &[(&str, Vec<PortMappingSpec>)] = &[
            ("80", vec![one(None, None, 80, Tcp)]),
            ("80/udp", vec![one(None, None, 80, Udp)]),
            ("8080:80", vec![one(None, Some((8080, 8080)), 80, Tcp)]),
            ("0:80", vec![one(None, None, 80, Tcp)]),
            ("8080:80/udp", vec![one(None, Some((8080, 8080)), 80, Udp)]),
            (
                "127.0.0.1:8080:80",
                vec![one(Some("127.0.0.1"), Some((8080, 8080)), 80, Tcp)],
            ),
            ("127.0.0.1::80", vec![one(Some("127.0.0.1"), None, 80, Tcp)]),
            (
                "0.0.0.0:8080:80",
                vec![one(None, Some((8080, 8080)), 80, Tcp)],
            ),
            (
                "80-81",
                vec![one(None, None, 80, Tcp), one(None, None, 81, Tcp)],
            ),
            (
                "8000-8001:80-81/udp",
                vec![
                    one(None, Some((8000, 8000)), 80, Udp),
                    one(None, Some((8001, 8001)), 81, Udp),
                ],
            ),
            ("8000-8010:80", vec![one(None, Some((8000, 8010)), 80, Tcp)]),
            (":80", vec![one(None, None, 80, Tcp)]),
        ];
        for (s, want) in cases {
            assert_eq!(&parse_port_spec(s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases = [
            ("", "container port: \"\" is not a port number"),
            ("abc", "container port: \"abc\" is not a port number"),
            ("0", "container port must not be 0"),
            ("70000", "\"70000\" is not a port number"),
            ("80/sctp", "unsupported protocol \"sctp\""),
            ("80/", "unsupported protocol \"\""),
            ("x:80", "host port: \"x\" is not a port number"),
            (
                "1.2.3:8080:80",
                "host address \"1.2.3\" is not an IPv4 address",
            ),
            ("[::1]:8080:80", "IPv6 host addresses are not supported"),
            ("::1:8080:80", "too many ':'"),
            ("8000-8002:80-81", "ranges differ in length"),
            ("90-80", "ends before it starts"),
            ("0-5:80", "must not start at 0"),
            ("8080:80-", "\"\" is not a port number"),
        ];
        for (s, want) in cases {
            let e = parse_port_spec(s).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid port mapping {s:?}: ")),
                "{e}"
            );
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn display_like_docker_port() {
        let m = PortMapping {
            host_ip: None,
            host_port: 8080,
            container_port: 80,
            proto: Proto::Tcp,
        };
        assert_eq!(m.to_string(), "80/tcp -> 0.0.0.0:8080");
    }

    #[test]
    fn taken_port_is_a_clear_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ip = Some(Ipv4Addr::LOCALHOST);
        let e = check_host_port_free(ip, port, Proto::Tcp)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "host port {port}/tcp on 127.0.0.1 is already in use"
            )),
            "{e}"
        );
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uport = udp.local_addr().unwrap().port();
        assert!(check_host_port_free(ip, uport, Proto::Udp).is_err());
        drop(listener);
        check_host_port_free(ip, port, Proto::Tcp).unwrap();
    }

    #[test]
    fn resolve_picks_ephemeral_and_honours_taken() {
        let specs = parse_port_spec("127.0.0.1::80").unwrap();
        let m = resolve_ports(&specs, &|_, _, _| false).unwrap();
        assert_eq!(m.len(), 1);
        assert_ne!(m[0].host_port, 0);
        assert_eq!(m[0].container_port, 80);
        // a port berth already maps is refused even though bind() would succeed
        let fixed = parse_port_spec(&format!("127.0.0.1:{}:80", m[0].host_port)).unwrap();
        let p = m[0].host_port;
        let e = resolve_ports(&fixed, &|_, port, _| port == p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already in use"), "{e}");
        // a range skips taken ports
        let range =
            parse_port_spec(&format!("127.0.0.1:{}-{}:80", p, p.saturating_add(5))).unwrap();
        let m = resolve_ports(&range, &|_, port, _| port == p).unwrap();
        assert_ne!(m[0].host_port, p);
    }
}
