//! Whether to leave TX checksum offload on the VXLAN device: `--checksum-offload
//! auto|on|off`, the way Calico decides it.
//!
//! The pitfall: with the offload on, the kernel leaves the inner TCP/UDP checksum for
//! "the hardware" to fill in after encapsulation. Kernels before 5.7 get that wrong when
//! the outer UDP packet is NAT'd on its way out (kube-proxy's MASQUERADE --random-fully):
//! the far end drops every TCP/UDP packet while ICMP works, or connections stall for 63 s
//! (kubernetes/kubernetes#88986, projectcalico/calico#3145). Calico's Felix disables the
//! offload on its VXLAN device only on kernels older than 5.7, and also when it cannot
//! tell the version (projectcalico/felix#2811, feature `ChecksumOffloadBroken`, with an
//! override); flannel left it to its troubleshooting notes (flannel-io/flannel#1279,
//! `ethtool -K flannel.1 tx-checksum-ip-generic off`) and kops applies that to every
//! flannel host (kubernetes/kops#9074). Turning the offload off also turns off
//! segmentation offload on the device: a single TCP stream across two namespace hosts
//! drops ~5.5× (docs/performance.md), which is why `off` is not the default any more.
//!
//! `auto` (the default) is Calico's rule: off below 5.7 or on an unreadable version, on
//! otherwise. A NIC or hypervisor driver with its own VXLAN checksum bug (vmxnet3 before
//! its 2020 fix, flannel#1279) cannot be told from the kernel version; such hosts want
//! `off` explicitly.

use super::config::TxChecksum;

/// The first kernel release whose VXLAN + NAT checksum handling is right (Calico's
/// threshold).
pub const FIXED_IN: (u32, u32) = (5, 7);

/// `--checksum-offload`: the policy; [`ChecksumOffload::resolve`] turns it into the
/// device setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChecksumOffload {
    /// Off only on kernels with the bug (or whose version can't be read).
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid checksum offload mode {0:?}: expected auto, on or off")]
pub struct ModeError(String);

impl std::str::FromStr for ChecksumOffload {
    type Err = ModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ChecksumOffload::Auto),
            "on" => Ok(ChecksumOffload::On),
            "off" => Ok(ChecksumOffload::Off),
            _ => Err(ModeError(s.to_string())),
        }
    }
}

/// `(major, minor)` of a kernel release string such as `6.18.0-1-amd64` or `5.4.0`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether a kernel of this release mangles inner checksums of NAT'd VXLAN with the
/// offload on. Unknown counts as broken: a slower overlay beats one that drops TCP.
pub fn kernel_has_checksum_bug(release: &str) -> bool {
    kernel_version(release).is_none_or(|v| v < FIXED_IN)
}

/// The running kernel's release (`uname -r`), or "" when unreadable.
pub fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default()
}

impl ChecksumOffload {
    /// The device setting for a kernel of `release`, and why, for the agent's log.
    pub fn resolve(self, release: &str) -> (TxChecksum, String) {
        let release = release.trim();
        match self {
            ChecksumOffload::On => (TxChecksum::Offload, "--checksum-offload on".into()),
            ChecksumOffload::Off => (TxChecksum::Software, "--checksum-offload off".into()),
            ChecksumOffload::Auto if kernel_has_checksum_bug(release) => (
                TxChecksum::Software,
                format!(
                    "auto: kernel {release:?} older than {}.{} or unknown (VXLAN + NAT checksum bug)",
                    FIXED_IN.0, FIXED_IN.1
                ),
            ),
            ChecksumOffload::Auto => (
                TxChecksum::Offload,
                format!(
                    "auto: kernel {release} has the VXLAN + NAT checksum fix ({}.{})",
                    FIXED_IN.0, FIXED_IN.1
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_release_strings() {
        assert_eq!(kernel_version("6.18.0-1-amd64\n"), Some((6, 18)));
        assert_eq!(kernel_version("5.7.0"), Some((5, 7)));
        assert_eq!(kernel_version("4.19.0-27-cloud-amd64"), Some((4, 19)));
        assert_eq!(kernel_version("5.10"), Some((5, 10)));
        assert_eq!(kernel_version("3"), None);
        assert_eq!(kernel_version(""), None);
        assert_eq!(kernel_version("garbage"), None);
    }

    /// Calico's table (felix environment feature detection): broken below 5.7, and when
    /// the version is garbage or missing.
    #[test]
    fn the_bug_is_detected_below_5_7_and_when_unknown() {
        for r in [
            "3.14.0",
            "4.19.0-27-amd64",
            "5.4.0-42-generic",
            "5.6.19",
            "",
        ] {
            assert!(kernel_has_checksum_bug(r), "{r}");
        }
        assert!(kernel_has_checksum_bug("Linux version 5.7.0"), "unparsable");
        for r in [
            "5.7.0",
            "5.8.0-rc1",
            "5.10.0-30-amd64",
            "6.1.0",
            "6.18.0",
            "10.0",
        ] {
            assert!(!kernel_has_checksum_bug(r), "{r}");
        }
    }

    #[test]
    fn auto_follows_the_kernel_and_on_off_override_it() {
        use ChecksumOffload::*;
        assert_eq!(Auto.resolve("6.18.0").0, TxChecksum::Offload);
        assert_eq!(Auto.resolve("5.4.0").0, TxChecksum::Software);
        assert_eq!(Auto.resolve("").0, TxChecksum::Software);
        assert_eq!(On.resolve("4.19.0").0, TxChecksum::Offload);
        assert_eq!(Off.resolve("6.18.0").0, TxChecksum::Software);
        assert!(Auto.resolve("5.4.0").1.contains("5.4.0"));
        assert_eq!("auto".parse::<ChecksumOffload>().unwrap(), Auto);
        assert_eq!("off".parse::<ChecksumOffload>().unwrap(), Off);
        let e = "yes".parse::<ChecksumOffload>().unwrap_err().to_string();
        assert!(
            e.contains("\"yes\"") && e.contains("auto, on or off"),
            "{e}"
        );
    }
}
