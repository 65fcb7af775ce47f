//! berth-cluster: the cluster controller's state store, host agents and the VXLAN overlay.

pub mod agent;
pub mod agent_cert;
pub mod agent_notify;
pub mod blocks;
pub mod controller;
pub mod model;
pub mod overlay;
pub mod store;
pub mod tls;
