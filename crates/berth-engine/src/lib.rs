//! berth-engine: containers as users drive them (docker/podman conventions).
pub mod paths;
pub mod record;
pub mod runtime;
