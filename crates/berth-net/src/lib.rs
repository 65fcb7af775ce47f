//! berth-net: container networking on one host (bridge, veth, IPAM, NAT, port mapping).
