//! berth-engine: containers as users drive them (docker/podman conventions).
pub mod defaults;
pub mod engine;
mod engine_net;
pub mod monitor;
pub mod network;
pub mod paths;
pub mod policy;
pub mod record;
pub mod request;
pub mod runtime;
pub mod seccomp_profile;
pub mod spec_builder;
pub mod userns;
