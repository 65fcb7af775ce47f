//! The cluster controller. `state` holds the operations (compare-and-swap transactions
//! on the store, safe from several controllers at once); the HTTP API and TLS sit on
//! top; `leader` picks the one controller that runs single-writer work (the sweep).

pub mod api;
pub mod auth;
pub mod leader;
pub mod map_revision;
pub mod pki;
pub mod seal;
pub mod serve;
pub mod state;
