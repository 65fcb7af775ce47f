//! berth-net against the real kernel, as root (skipped otherwise). Each test builds its
//! own bridges, namespaces and nftables table and removes them, even on failure.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use berth_net::{PortMapping, Proto};
use common::*;

#[test]
fn attach_configures_eth0_route_and_lo_and_detach_removes_the_pair() {
    if !is_root() {
        return;
    }
    let table = TableGuard::new();
    let t = TestNet::new(&table.0, false);
    let net = &t.net;
    // setup is idempotent
    berth_net::setup_network(net).unwrap();
    let br = sh(&["ip", "-o", "-4", "addr", "show", "dev", &net.bridge]);
    assert!(br.contains(&format!("{}/28", net.gateway)), "{br}");
    assert!(sh(&["ip", "-o", "link", "show", &net.bridge]).contains(",UP"));

    let ns = Ns::new();
    let c = attach(net, &ns, 5);
    let eth0 = ns.run(&["ip", "-o", "-4", "addr", "show", "eth0"]).unwrap();
    assert!(eth0.contains(&format!("{}/28", c.addr)), "{eth0}");
    let link = ns.run(&["ip", "-o", "link", "show", "eth0"]).unwrap();
    let [a, b, c3, d] = c.addr.octets();
    assert!(
        link.contains(&format!("02:42:{a:02x}:{b:02x}:{c3:02x}:{d:02x}")),
        "{link}"
    );
    assert!(link.contains("mtu 1450") && link.contains(",UP"), "{link}");
    assert!(sh(&["ip", "-o", "link", "show", &net.bridge]).contains("mtu 1450"));
    let lo = ns.run(&["ip", "-o", "link", "show", "lo"]).unwrap();
    assert!(lo.contains(",UP"), "{lo}");
    let routes = ns.run(&["ip", "-4", "route"]).unwrap();
    assert!(
        routes.contains(&format!("default via {} dev eth0", net.gateway)),
        "{routes}"
    );
    let veth = berth_net::link::host_ifname(&c.id);
    let host_end = sh(&["ip", "-o", "link", "show", &veth]);
    assert!(
        host_end.contains(&format!("master {}", net.bridge)) && host_end.contains(",UP"),
        "{host_end}"
    );

    // a second attach of the same container is a clear error, and leaves the first alone
    let e = berth_net::attach(net, ns.pid, &c.id, c.addr)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("creating veth {veth} for container")),
        "{e}"
    );
    assert!(e.contains("exists"), "{e}");

    berth_net::detach(&c.id).unwrap();
    assert!(!link_exists(&veth));
    assert!(ns.run(&["ip", "link", "show", "eth0"]).is_none());
    berth_net::detach(&c.id).unwrap(); // idempotent

    // attaching to a network whose bridge is gone says so
    let mut gone = net.clone();
    gone.bridge = "btnothere0".into();
    let e = berth_net::attach(&gone, ns.pid, &c.id, c.addr)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bridge btnothere0 of network"), "{e}");
}

#[test]
fn attach_timing() {
    if !is_root() {
        return;
    }
    let table = TableGuard::new();
    let t = TestNet::new(&table.0, false);
    let ns = Ns::new();
    let id = container_id();
    let mut times = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        berth_net::attach(&t.net, ns.pid, &id, host(t.net.subnet, 2)).unwrap();
        times.push(start.elapsed());
        berth_net::detach(&id).unwrap();
    }
    times.sort();
    eprintln!(
        "attach(): median {:?}, min {:?}, max {:?} over {} runs",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
}

#[test]
fn attach_into_a_user_namespace_owned_netns() {
    if !is_root() {
        return;
    }
    let table = TableGuard::new();
    let t = TestNet::new(&table.0, false);
    let (a, b) = (Ns::with_userns(), Ns::new());
    let ca = attach(&t.net, &a, 2);
    let _cb = attach(&t.net, &b, 3);
    let server = serve_once(a.listen_tcp(8000));
    let answer = talk(b.connect(SocketAddrV4::new(ca.addr, 8000)).unwrap());
    assert_eq!(answer, "hello ping");
    assert!(server.join().unwrap().is_some());
}

#[test]
fn containers_on_one_network_reach_each_other_and_are_isolated_from_other_networks() {
    if !is_root() {
        return;
    }
    let table = TableGuard::new();
    let (t1, t2) = (TestNet::new(&table.0, false), TestNet::new(&table.0, false));
    let (a, b, other) = (Ns::new(), Ns::new(), Ns::new());
    let _ca = attach(&t1.net, &a, 2);
    let cb = attach(&t1.net, &b, 3);
    let co = attach(&t2.net, &other, 2);

    let server = serve_once(b.listen_tcp(7000));
    assert_eq!(
        talk(a.connect(SocketAddrV4::new(cb.addr, 7000)).unwrap()),
        "hello ping"
    );
    // same L2: the server sees the client's own address
    assert_eq!(
        server.join().unwrap().unwrap().ip(),
        std::net::IpAddr::V4(host(t1.net.subnet, 2))
    );

    // across networks: routed by the host, dropped by the forward rules, both ways
    let l = other.listen_tcp(7001);
    let e = a.connect_refused(SocketAddrV4::new(co.addr, 7001));
    assert!(
        e.is_err(),
        "network {} reached network {}",
        t1.net.name,
        t2.net.name
    );
    let _l2 = a.listen_tcp(7002);
    assert!(other
        .connect_refused(SocketAddrV4::new(host(t1.net.subnet, 2), 7002))
        .is_err());

    // control: without the second network's rules the same path is open, so it was the
    // rules that dropped it
    berth_net::nft::remove_network(&t2.net).unwrap();
    let server = serve_once(l);
    assert_eq!(
        talk(a.connect(SocketAddrV4::new(co.addr, 7001)).unwrap()),
        "hello ping"
    );
    assert!(server.join().unwrap().is_some());
}

#[test]
fn egress_is_masqueraded_and_internal_networks_have_none() {
    if !is_root() {
        return;
    }
    let table = TableGuard::new();
    let (t, ti) = (TestNet::new(&table.0, false), TestNet::new(&table.0, true));
    let outside = Outside::new();
    let (c, ci) = (Ns::new(), Ns::new());
    let _a = attach(&t.net, &c, 2);
    let _ai = attach(&ti.net, &ci, 2);

    let server = serve_once(outside.ns.listen_tcp(9000));
    let to = SocketAddrV4::new(outside.addr, 9000);
    assert_eq!(talk(c.connect(to).unwrap()), "hello ping");
    let seen = server.join().unwrap().unwrap();
    assert_eq!(
        seen.ip(),
        std::net::IpAddr::V4(outside.host_addr),
        "source must be the host's"
    );

    let _l = outside.ns.listen_tcp(9001);
    assert!(ci
        .connect_refused(SocketAddrV4::new(outside.addr, 9001))
        .is_err());
    // an internal network's containers still reach each other
    let ci2 = Ns::new();
    let a2 = attach(&ti.net, &ci2, 3);
    let server = serve_once(ci2.listen_tcp(9002));
    assert_eq!(
        talk(ci.connect(SocketAddrV4::new(a2.addr, 9002)).unwrap()),
        "hello ping"
    );
    assert!(server.join().unwrap().is_some());
    // and cannot publish ports
    let m = PortMapping {
        host_ip: None,
        host_port: 1,
        container_port: 1,
        proto: Proto::Tcp,
    };
    let e = berth_net::add_port_mappings(&ti.net, &a2.id, a2.addr, &[m]).unwrap_err();
    assert!(e.to_string().contains("is internal"), "{e}");
}

fn ephemeral(host_ip: Option<Ipv4Addr>, container_port: u16, proto: Proto) -> PortMapping {
    let spec = berth_net::PortMappingSpec {
        host_ip,
        host_ports: None,
        container_port,
        proto,
    };
    berth_net::resolve_ports(&[spec], &|_, _, _| false).unwrap()[0]
}

#[test]
fn tcp_port_mapping_from_loopback_host_address_and_a_client_namespace() {
    if !is_root() {
        return;
    }
    let table = TableGuard::new();
    let t = TestNet::new(&table.0, false);
    let outside = Outside::new();
    let c = Ns::new();
    let a = attach(&t.net, &c, 2);
    let m = ephemeral(None, 80, Proto::Tcp);
    berth_net::add_port_mappings(&t.net, &a.id, a.addr, &[m]).unwrap();
    let listener = c.listen_tcp(80);

    // from the host on 127.0.0.1 (masqueraded to the gateway: the only way back)
    let server = serve_once(listener.try_clone().unwrap());
    let s = std::net::TcpStream::connect_timeout(
        &SocketAddrV4::new(Ipv4Addr::LOCALHOST, m.host_port).into(),
        CONNECT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(talk(s), "hello ping");
    assert_eq!(
        server.join().unwrap().unwrap().ip(),
        std::net::IpAddr::V4(t.net.gateway)
    );

    // from the host on one of its addresses
    let server = serve_once(listener.try_clone().unwrap());
    let s = std::net::TcpStream::connect_timeout(
        &SocketAddrV4::new(outside.host_addr, m.host_port).into(),
        CONNECT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(talk(s), "hello ping");
    assert!(server.join().unwrap().is_some());

    // from another host: the client's address is preserved
    let server = serve_once(listener.try_clone().unwrap());
    let s = outside
        .ns
        .connect(SocketAddrV4::new(outside.host_addr, m.host_port))
        .unwrap();
    assert_eq!(talk(s), "hello ping");
    assert_eq!(
        server.join().unwrap().unwrap().ip(),
        std::net::IpAddr::V4(outside.addr)
    );

    // berth knows the port is published; another container cannot take it
    let published = berth_net::published_ports(&t.net).unwrap();
    assert!(published
        .iter()
        .any(|p| p.container_id == a.id && p.mapping == m));
    let c2 = Ns::new();
    let a2 = attach(&t.net, &c2, 3);

    // hairpin: a neighbour on the same bridge through the published port on the gateway
    let server = serve_once(listener.try_clone().unwrap());
    let s = c2
        .connect(SocketAddrV4::new(t.net.gateway, m.host_port))
        .unwrap();
    assert_eq!(talk(s), "hello ping");
    assert!(server.join().unwrap().is_some());

    let specs = berth_net::parse_port_spec(&format!("{}:80", m.host_port)).unwrap();
    let e = berth_net::resolve_host_ports(&t.net, &specs)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already in use"), "{e}");
    let e = berth_net::add_port_mappings(&t.net, &a2.id, a2.addr, &[m])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "host port {}/tcp on 0.0.0.0 is already published by container {}",
            m.host_port, a.id
        )
    );

    // unpublished: no rule left, idempotently
    berth_net::remove_port_mappings(&t.net, &a.id).unwrap();
    berth_net::remove_port_mappings(&t.net, &a.id).unwrap();
    assert!(berth_net::published_ports(&t.net).unwrap().is_empty());
    assert!(!sh(&["nft", "list", "table", "inet", &table.0]).contains(&a.id));
}

#[test]
fn udp_port_mapping_preserves_the_client_address() {
    if !is_root() {
        return;
    }
    let table = TableGuard::new();
    let t = TestNet::new(&table.0, false);
    let outside = Outside::new();
    let c = Ns::new();
    let a = attach(&t.net, &c, 2);
    let m = ephemeral(Some(outside.host_addr), 53, Proto::Udp);
    berth_net::add_port_mappings(&t.net, &a.id, a.addr, &[m]).unwrap();

    let server = c.bind_udp(53);
    server
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let (n, peer) = server.recv_from(&mut buf).ok()?;
        server.send_to(&buf[..n], peer).ok()?;
        Some(peer)
    });
    let client = outside
        .ns
        .enter(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    client
        .send_to(b"udp?", SocketAddrV4::new(outside.host_addr, m.host_port))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"udp?");
    assert_eq!(
        echo.join().unwrap().unwrap().ip(),
        std::net::IpAddr::V4(outside.addr)
    );
}

#[test]
fn a_host_port_held_by_a_host_process_is_refused() {
    if !is_root() {
        return;
    }
    let holder = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let specs = berth_net::parse_port_spec(&format!("{port}:80")).unwrap();
    let e = berth_net::resolve_ports(&specs, &|_, _, _| false)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "host port {port}/tcp on 0.0.0.0 is already in use"
        )),
        "{e}"
    );
}

#[test]
fn store_lifecycle_exhaustion_and_cleanup() {
    if !is_root() {
        return;
    }
    let table = TableGuard::new();
    let dir = tempfile::tempdir().unwrap();
    let nets = berth_net::Networks::open_with_table(dir.path(), &table.0).unwrap();
    let b = block();
    let small = ipnet::Ipv4Net::new(b.network(), 30).unwrap();
    let bridge = unique("bt");
    let req = berth_net::CreateRequest {
        name: unique("tiny"),
        subnet: Some(small),
        bridge: Some(bridge.clone()),
        ..Default::default()
    };
    let net = nets.create(&req).unwrap();
    struct Cleanup(berth_net::NetworkConfig);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = berth_net::teardown_network(&self.0);
        }
    }
    let _cleanup = Cleanup(net.clone());
    berth_net::setup_network(&net).unwrap();
    assert!(link_exists(&bridge) && table_exists(&table.0));

    let ipam = nets.ipam(&net);
    let ns = Ns::new();
    let id = container_id();
    let addr = ipam.allocate(&id, None).unwrap();
    assert_eq!(addr, host(small, 2));
    let e = ipam.allocate("another", None).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("network {} ({small}): no free addresses", net.name)
    );

    let att = berth_net::attach(&net, ns.pid, &id, addr).unwrap();
    let m = ephemeral(Some(Ipv4Addr::LOCALHOST), 80, Proto::Tcp);
    berth_net::add_port_mappings(&net, &id, addr, &[m]).unwrap();
    let e = nets.remove(&net.name).unwrap_err().to_string();
    assert!(e.contains("is in use by 1 container(s)"), "{e}");

    // the container dies: its veth goes with its namespace; rm cleans the rest
    drop(ns);
    let deadline = Instant::now() + Duration::from_secs(5);
    while link_exists(&att.host_ifname) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !link_exists(&att.host_ifname),
        "veth outlived its namespace"
    );
    berth_net::detach(&id).unwrap();
    berth_net::remove_port_mappings(&net, &id).unwrap();
    ipam.release(&id).unwrap();
    nets.remove(&net.name).unwrap();
    assert!(!link_exists(&bridge), "bridge left behind");
    assert!(!table_exists(&table.0), "nft table left behind");
    assert!(nets.list().unwrap().is_empty());
    // and every removal again is a no-op
    berth_net::teardown_network(&net).unwrap();
    berth_net::remove_port_mappings(&net, &id).unwrap();
    berth_net::detach(&id).unwrap();
}

#[test]
fn a_network_with_two_ranges_has_both_gateways_and_routes_each_container_via_its_own() {
    if !is_root() {
        return;
    }
    let table = TableGuard::new();
    let mut t = TestNet::new(&table.0, false);
    let second = block();
    t.net
        .more_ranges
        .push(berth_net::config::Range::with_first_host(second));
    // Setting up again adds the new gateway to the existing bridge.
    berth_net::setup_network(&t.net).unwrap();
    let net = &t.net;
    let br = sh(&["ip", "-o", "-4", "addr", "show", "dev", &net.bridge]);
    assert!(br.contains(&format!("{}/28", net.gateway)), "{br}");
    assert!(br.contains(&format!("{}/28", host(second, 1))), "{br}");

    let (ns1, ns2) = (Ns::new(), Ns::new());
    let c1 = attach(net, &ns1, 5);
    let id2 = container_id();
    let c2 = Attached {
        net,
        id: id2,
        addr: host(second, 5),
    };
    berth_net::attach(net, ns2.pid, &c2.id, c2.addr).unwrap();
    let eth0 = ns2
        .run(&["ip", "-o", "-4", "addr", "show", "eth0"])
        .unwrap();
    assert!(eth0.contains(&format!("{}/28", c2.addr)), "{eth0}");
    let routes = ns2.run(&["ip", "-4", "route"]).unwrap();
    assert!(
        routes.contains(&format!("default via {} dev eth0", host(second, 1))),
        "{routes}"
    );
    // Across the ranges, through the host.
    let listener = ns2.listen_tcp(7011);
    let server = serve_once(listener);
    let reply = talk(ns1.connect(SocketAddrV4::new(c2.addr, 7011)).unwrap());
    assert_eq!(reply, "hello ping");
    assert_eq!(
        server.join().unwrap().map(|a| a.ip().to_string()),
        Some(c1.addr.to_string()),
        "unNATed between the ranges"
    );
    // An address in neither range is refused before anything is made.
    let e = berth_net::attach(net, ns2.pid, &container_id(), Ipv4Addr::new(10, 1, 2, 3))
        .unwrap_err()
        .to_string();
    assert!(e.contains("in no subnet of network"), "{e}");
}
