//! The few /proc/sys knobs networks need.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("setting {path} to {value}: {source}")]
pub struct SysctlError {
    path: PathBuf,
    value: String,
    #[source]
    source: std::io::Error,
}

/// Writes `value` to /proc/sys/<key with dots as slashes>, skipping the write when the
/// value is already there (writes to ip_forward reset per-device settings).
pub fn set(key: &str, value: &str) -> Result<(), SysctlError> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    if std::fs::read_to_string(&path).is_ok_and(|cur| cur.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|source| SysctlError {
        path,
        value: value.to_string(),
        source,
    })
}

/// Routing between the bridges and the host's other interfaces.
pub fn enable_ip_forward() -> Result<(), SysctlError> {
    set("net.ipv4.ip_forward", "1")
}

/// Lets the host reach a published port on 127.0.0.1: after DNAT, the packet still has
/// a loopback source, which the kernel only routes out of a device with route_localnet.
pub fn enable_route_localnet(dev: &str) -> Result<(), SysctlError> {
    // A device name may contain '.', which must not become a path separator.
    let path = PathBuf::from("/proc/sys/net/ipv4/conf")
        .join(dev)
        .join("route_localnet");
    if std::fs::read_to_string(&path).is_ok_and(|cur| cur.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|source| SysctlError {
        path,
        value: "1".into(),
        source,
    })
}
