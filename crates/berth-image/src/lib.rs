//! berth-image: content-addressed image store, registry client (OCI distribution), safe
//! layer unpacking and per-container overlay snapshots.

pub mod archive;
pub mod digest;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod store;
pub mod unpack;
