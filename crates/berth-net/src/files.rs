//! The /etc/hosts and /etc/resolv.conf a container gets. Pure text generation; the engine
//! decides where the files go.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

/// /etc/hosts: localhost entries, the container's own name on its address (or on
/// 127.0.0.1 without a network, as docker does with --network none), then `--add-host`
/// entries in the order given.
pub fn hosts_file(hostname: &str, addr: Option<Ipv4Addr>, extra: &[(String, IpAddr)]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        let own = addr.unwrap_or(Ipv4Addr::LOCALHOST);
        let _ = writeln!(out, "{own}\t{hostname}");
    }
    for (name, ip) in extra {
        let _ = writeln!(out, "{ip}\t{name}");
    }
    out
}

/// /etc/resolv.conf from nameservers, search domains and options.
pub fn resolv_conf(nameservers: &[IpAddr], search: &[String], options: &[String]) -> String {
    let mut out = String::new();
    if !search.is_empty() {
        let _ = writeln!(out, "search {}", search.join(" "));
    }
    for ns in nameservers {
        let _ = writeln!(out, "nameserver {ns}");
    }
    if !options.is_empty() {
        let _ = writeln!(out, "options {}", options.join(" "));
    }
    out
}

/// The nameservers of the host's resolv.conf text that a container can use: loopback
/// resolvers (systemd-resolved's 127.0.0.53) are unreachable from another netns, so
/// they are dropped, as docker does.
pub fn usable_host_nameservers(host_resolv_conf: &str) -> Vec<IpAddr> {
    host_resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_with_address_and_extra() {
        let extra = [
            ("db".to_string(), "10.0.0.5".parse().unwrap()),
            ("v6".to_string(), "fd00::1".parse().unwrap()),
        ];
        let h = hosts_file("web", Some("10.88.0.2".parse().unwrap()), &extra);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"));
        assert!(
            h.ends_with("10.88.0.2\tweb\n10.0.0.5\tdb\nfd00::1\tv6\n"),
            "{h}"
        );
    }

    #[test]
    fn hosts_without_network() {
        let h = hosts_file("box", None, &[]);
        assert!(h.ends_with("127.0.0.1\tbox\n"), "{h}");
    }

    #[test]
    fn resolv() {
        let r = resolv_conf(
            &["10.0.0.1".parse().unwrap(), "1.1.1.1".parse().unwrap()],
            &["a.example".into(), "b.example".into()],
            &["ndots:2".into()],
        );
        assert_eq!(
            r,
            "search a.example b.example\nnameserver 10.0.0.1\nnameserver 1.1.1.1\noptions ndots:2\n"
        );
        assert_eq!(resolv_conf(&[], &[], &[]), "");
    }

    #[test]
    fn host_nameservers_drop_loopback() {
        let conf = "# x\nnameserver 127.0.0.53\nnameserver 192.0.2.1 # c\nsearch x\nnameserver ::1\nnameserver fd00::53\n";
        let ns = usable_host_nameservers(conf);
        assert_eq!(
            ns,
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "fd00::53".parse().unwrap()
            ]
        );
    }
}
