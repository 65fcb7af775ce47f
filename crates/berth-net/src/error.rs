//! The crate's error: one variant per module, each module's own enum inside.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Subnet(#[from] crate::subnet::SubnetError),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    #[error(transparent)]
    Nft(#[from] crate::nft::NftError),
    #[error(transparent)]
    Ports(#[from] crate::ports::PortError),
    #[error(transparent)]
    Sysctl(#[from] crate::sysctl::SysctlError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
