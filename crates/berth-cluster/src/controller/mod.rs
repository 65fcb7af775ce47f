//! The cluster controller: the single writer of cluster state. `state` holds the
//! operations (compare-and-swap transactions on the store); the HTTP API and TLS sit on
//! top.

pub mod api;
pub mod auth;
pub mod leader;
pub mod serve;
pub mod state;
