//! berth-engine: containers as users drive them (docker/podman conventions).
