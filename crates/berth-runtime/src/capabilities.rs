//! Applying the spec's five capability sets.
//!
//! The bounding set is dropped first (needs CAP_SETPCAP, which we still hold), then after the
//! uid switch (with PR_SET_KEEPCAPS) the effective, permitted and inheritable sets are set
//! exactly, and ambient capabilities raised last.

use std::collections::HashSet;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CapError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: nix::errno::Errno,
    },
    #[error("setting {set} capabilities: {source}")]
    Set {
        set: &'static str,
        source: caps::errors::CapsError,
    },
}

/// Converts oci-spec capabilities into the `caps` crate's type. Capabilities the running
/// kernel does not know are skipped (as runc does), so newer profiles work on older kernels.
pub fn to_caps(set: &Capabilities) -> Result<CapsHashSet, CapError> {
    let mut out = HashSet::new();
    let supported = caps::runtime::thread_all_supported();
    for c in set {
        let name = c.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{}", name.to_uppercase())
        };
        let cap = Capability::from_str(&name).map_err(|_| CapError::Unknown(name.clone()))?;
        if supported.contains(&cap) {
            out.insert(cap);
        }
    }
    Ok(out)
}

pub struct Resolved {
    pub bounding: Option<CapsHashSet>,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

pub fn resolve(c: Option<&LinuxCapabilities>) -> Result<Resolved, CapError> {
    let get = |s: Option<&Capabilities>| s.map(to_caps).transpose().map(|o| o.unwrap_or_default());
    Ok(Resolved {
        bounding: c
            .and_then(|c| c.bounding().as_ref())
            .map(to_caps)
            .transpose()?,
        effective: get(c.and_then(|c| c.effective().as_ref()))?,
        permitted: get(c.and_then(|c| c.permitted().as_ref()))?,
        inheritable: get(c.and_then(|c| c.inheritable().as_ref()))?,
        ambient: get(c.and_then(|c| c.ambient().as_ref()))?,
    })
}

/// Drops every capability not in the bounding set. Without a bounding set in the spec,
/// the process gets none (runc treats an absent set as empty).
pub fn drop_bounding(r: &Resolved) -> Result<(), CapError> {
    let keep = r.bounding.clone().unwrap_or_default();
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| CapError::Set {
                set: "bounding",
                source,
            })?;
        }
    }
    Ok(())
}

/// Sets effective, permitted and inheritable in one capset(2), so no intermediate state
/// breaks the kernel's subset rules; then raises ambient ones (which must be permitted and
/// inheritable by then).
pub fn apply(r: &Resolved) -> Result<(), CapError> {
    capset(&r.effective, &r.permitted, &r.inheritable).map_err(|source| CapError::Sys {
        op: "setting effective/permitted/inheritable capabilities",
        source,
    })?;
    caps::clear(None, CapSet::Ambient).map_err(|source| CapError::Set {
        set: "ambient",
        source,
    })?;
    for cap in &r.ambient {
        caps::raise(None, CapSet::Ambient, *cap).map_err(|source| CapError::Set {
            set: "ambient",
            source,
        })?;
    }
    Ok(())
}

fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0u64, |m, c| m | c.bitmask())
}

fn capset(e: &CapsHashSet, p: &CapsHashSet, i: &CapsHashSet) -> Result<(), nix::errno::Errno> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let (e, p, i) = (mask(e), mask(p), mask(i));
    let hdr = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        Data {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: capset reads a v3 header and two data structs, as declared above.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) };
    nix::errno::Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_spec_names() {
        let set: Capabilities =
            serde_json::from_str(r#"["CAP_CHOWN","CAP_NET_BIND_SERVICE"]"#).unwrap();
        let c = to_caps(&set).unwrap();
        assert!(c.contains(&Capability::CAP_CHOWN));
        assert!(c.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert_eq!(c.len(), 2);
    }
}
