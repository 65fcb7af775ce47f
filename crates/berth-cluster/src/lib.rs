//! berth-cluster: the cluster controller's state store, host agents and the VXLAN overlay.

pub mod store;
