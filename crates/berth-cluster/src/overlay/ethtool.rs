//! The UDP checksum offload pitfall (see [`super::config::TxChecksum`] for the policy).
//!
//! With TX checksum offload on the VXLAN device, the kernel hands the inner packet's
//! checksum to "the hardware" (CHECKSUM_PARTIAL) and relies on the underlay NIC to fill
//! it in after encapsulation. Behind NAT and with several NICs and virtual NICs (vmxnet3,
//! some cloud NICs) the inner TCP/UDP checksum then arrives wrong and the far end
//! silently drops the packets: ICMP works, TCP and UDP don't (flannel issue #1279). The
//! known workaround (flannel's troubleshooting notes; kops applies it to flannel.1) is
//! `ethtool -K flannel.1 tx-checksum-ip-generic off`, so the checksum is computed in
//! software before encapsulation. We do the same through the SIOCETHTOOL ioctl: look the
//! feature up by name in the kernel's feature string set (its bit number is not ABI),
//! then set it with ETHTOOL_SFEATURES and read it back. The legacy ETHTOOL_STXCSUM would
//! also work but clears every checksum feature (SCTP CRC, FCoE) rather than the one
//! `ethtool -K` clears.
//!
//! The ioctl acts on the device in the calling thread's network namespace.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The feature `ethtool -K <dev> tx-checksum-ip-generic off` clears (NETIF_F_HW_CSUM).
pub const TX_CSUM_FEATURE: &str = "tx-checksum-ip-generic";

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
/// A sanity bound on the feature count (the kernel has about 70).
const MAX_FEATURES: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    #[error("{op} on device {dev}: {source}")]
    Ioctl {
        op: &'static str,
        dev: String,
        #[source]
        source: io::Error,
    },
    #[error("device {dev} has no feature named {feature}")]
    NoFeature { dev: String, feature: String },
    #[error("device {dev} did not take feature {feature} {state}")]
    Stuck {
        dev: String,
        feature: String,
        state: &'static str,
    },
    #[error("invalid device name {0:?} for an ethtool request")]
    Name(String),
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut c_void,
    _pad: [u8; 16],
}

/// A socket to carry ethtool ioctls to one device.
struct Ethtool {
    fd: OwnedFd,
    dev: String,
    name: [u8; libc::IFNAMSIZ],
}

impl Ethtool {
    fn open(dev: &str) -> Result<Ethtool, EthtoolError> {
        if dev.is_empty() || dev.len() >= libc::IFNAMSIZ || dev.contains('\0') {
            return Err(EthtoolError::Name(dev.to_string()));
        }
        let mut name = [0u8; libc::IFNAMSIZ];
        name[..dev.len()].copy_from_slice(dev.as_bytes());
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(EthtoolError::Ioctl {
                op: "opening a socket for ethtool",
                dev: dev.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Ethtool {
            fd,
            dev: dev.to_string(),
            name,
        })
    }

    /// Runs one SIOCETHTOOL request whose command struct is `buf` (u32-aligned, the
    /// command in its first word). Returns the ioctl's non-negative result.
    fn ioctl(&self, op: &'static str, buf: &mut [u32]) -> Result<i32, EthtoolError> {
        let mut req = IfReq {
            name: self.name,
            data: buf.as_mut_ptr().cast(),
            _pad: [0; 16],
        };
        // SAFETY: `req` is a valid ifreq whose data points at `buf`, sized by the caller
        // for the command it holds; the kernel writes only within the sizes stated there.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
        if rc < 0 {
            return Err(EthtoolError::Ioctl {
                op,
                dev: self.dev.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(rc)
    }

    /// The names of the device's features, in bit order.
    fn feature_names(&self) -> Result<Vec<String>, EthtoolError> {
        // struct ethtool_sset_info { u32 cmd; u32 reserved; u64 sset_mask; u32 data[]; }
        let mut info = [0u32; 5];
        info[0] = ETHTOOL_GSSET_INFO;
        // The u64 mask as two native-endian words.
        let mask = (1u64 << ETH_SS_FEATURES).to_ne_bytes();
        info[2] = u32::from_ne_bytes([mask[0], mask[1], mask[2], mask[3]]);
        info[3] = u32::from_ne_bytes([mask[4], mask[5], mask[6], mask[7]]);
        self.ioctl("reading the feature count", &mut info)?;
        // The kernel writes as many strings as the device has, whatever length we ask
        // for, so the buffer below must fit the count it reported.
        let count = info[4];
        if count == 0 || count > MAX_FEATURES {
            return Err(EthtoolError::Ioctl {
                op: "reading the feature count",
                dev: self.dev.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("implausible feature count {count}"),
                ),
            });
        }
        // struct ethtool_gstrings { u32 cmd; u32 string_set; u32 len; u8 data[]; }
        let words = 3 + (count as usize * ETH_GSTRING_LEN) / 4;
        let mut strings = vec![0u32; words];
        strings[0] = ETHTOOL_GSTRINGS;
        strings[1] = ETH_SS_FEATURES;
        strings[2] = count;
        self.ioctl("reading the feature names", &mut strings)?;
        let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        Ok(bytes
            .chunks(ETH_GSTRING_LEN)
            .take(count as usize)
            .map(|c| {
                let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                String::from_utf8_lossy(&c[..end]).into_owned()
            })
            .collect())
    }

    /// Whether feature bit `bit` is active.
    fn active(&self, bit: usize, count: usize) -> Result<bool, EthtoolError> {
        // struct ethtool_gfeatures { u32 cmd; u32 size; {available, requested, active,
        // never_changed}[size] }
        let blocks = count.div_ceil(32);
        let mut buf = vec![0u32; 2 + 4 * blocks];
        buf[0] = ETHTOOL_GFEATURES;
        buf[1] = blocks as u32;
        self.ioctl("reading the features", &mut buf)?;
        let active = buf[2 + 4 * (bit / 32) + 2];
        Ok(active & (1 << (bit % 32)) != 0)
    }

    /// Asks for feature bit `bit` to be `on`.
    fn set(&self, bit: usize, count: usize, on: bool) -> Result<(), EthtoolError> {
        // struct ethtool_sfeatures { u32 cmd; u32 size; {valid, requested}[size] }
        let blocks = count.div_ceil(32);
        let mut buf = vec![0u32; 2 + 2 * blocks];
        buf[0] = ETHTOOL_SFEATURES;
        buf[1] = blocks as u32;
        buf[2 + 2 * (bit / 32)] = 1 << (bit % 32);
        if on {
            buf[2 + 2 * (bit / 32) + 1] = 1 << (bit % 32);
        }
        // A positive result (ETHTOOL_F_WISH etc.) means "not everything as asked";
        // the caller reads the feature back, which is the real check.
        self.ioctl("setting the features", &mut buf).map(drop)
    }

    fn bit_of(&self, feature: &str) -> Result<(usize, usize), EthtoolError> {
        let names = self.feature_names()?;
        let bit =
            names
                .iter()
                .position(|n| n == feature)
                .ok_or_else(|| EthtoolError::NoFeature {
                    dev: self.dev.clone(),
                    feature: feature.to_string(),
                })?;
        Ok((bit, names.len()))
    }
}

/// Whether `dev` computes TX checksums in "hardware" (the offload is on).
pub fn tx_checksum_offload(dev: &str) -> Result<bool, EthtoolError> {
    let e = Ethtool::open(dev)?;
    let (bit, count) = e.bit_of(TX_CSUM_FEATURE)?;
    e.active(bit, count)
}

/// Turns TX checksum offload off on `dev` (`ethtool -K dev tx-checksum-ip-generic off`);
/// returns whether it had to change anything (a second call is a pure read).
pub fn disable_tx_checksum_offload(dev: &str) -> Result<bool, EthtoolError> {
    set_tx_checksum_offload(dev, false)
}

/// Turns TX checksum offload on or off on `dev`; returns whether it changed anything.
pub fn set_tx_checksum_offload(dev: &str, on: bool) -> Result<bool, EthtoolError> {
    let e = Ethtool::open(dev)?;
    let (bit, count) = e.bit_of(TX_CSUM_FEATURE)?;
    if e.active(bit, count)? == on {
        return Ok(false);
    }
    e.set(bit, count, on)?;
    if e.active(bit, count)? != on {
        return Err(EthtoolError::Stuck {
            dev: dev.to_string(),
            feature: TX_CSUM_FEATURE.to_string(),
            state: if on { "on" } else { "off" },
        });
    }
    Ok(true)
}
