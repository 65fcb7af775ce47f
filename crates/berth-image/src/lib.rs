//! berth-image: content-addressed image store, registry client (OCI distribution), safe
//! layer unpacking and per-container overlay snapshots.

pub mod digest;
pub mod reference;
