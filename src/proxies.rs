//! Trusted proxies: which TCP peers may tell the verifier what request they are asking about
//! (SPEC §5 forward-auth).
//!
//! `X-Forwarded-Method`/`X-Forwarded-Uri` and `X-Original-Method`/`X-Original-URI` decide the
//! route, and so the requirement. They are honoured only when the connection comes from an
//! address in this list (CIDR blocks or single addresses; default loopback only); from anyone
//! else they are ignored. The entry `unix` trusts every peer of a Unix-socket listener
//! (`server.listen = "unix:PATH"`): only processes the socket file's mode lets in can connect,
//! which is narrower than loopback. This module only parses and matches peers; it knows no
//! HTTP.

use std::net::IpAddr;

/// The entry of `trusted_proxies` that trusts peers on a Unix socket.
pub const UNIX_ENTRY: &str = "unix";

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A TCP peer.
    Ip(IpAddr),
    /// A process on this host, connected to a Unix-socket listener: it has no address.
    Unix,
}

impl Peer {
    /// The peer's IP address, if it has one.
    pub fn ip(self) -> Option<IpAddr> {
        match self {
            Self::Ip(ip) => Some(ip),
            Self::Unix => None,
        }
    }
}

impl From<IpAddr> for Peer {
    fn from(ip: IpAddr) -> Self {
        Self::Ip(ip)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Unix => f.write_str("unix socket"),
        }
    }
}

/// One CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    network: IpAddr,
    prefix: u8,
}

/// The peers whose forwarded headers are trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Vec<Block>,
    /// The list holds `unix`: Unix-socket peers are trusted.
    unix: bool,
}

/// Why an entry of `trusted_proxies` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "trusted_proxies[{index}]: `{entry}` is not an IP address, a CIDR block or `unix` ({reason})"
)]
pub struct ProxyListError {
    /// Position in the list, from 0.
    pub index: usize,
    /// The entry as written.
    pub entry: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl TrustedProxies {
    /// Parses entries such as `127.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`, or `unix` (every
    /// peer of a Unix-socket listener).
    ///
    /// # Errors
    ///
    /// [`ProxyListError`] naming the first bad entry. A block with host bits set
    /// (`10.0.0.1/8`) is refused: it usually means the operator meant something else.
    pub fn parse(entries: &[impl AsRef<str>]) -> Result<Self, ProxyListError> {
        let mut blocks = Vec::with_capacity(entries.len());
        let mut unix = false;
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref();
            if entry == UNIX_ENTRY {
                unix = true;
                continue;
            }
            let error = |reason| ProxyListError {
                index,
                entry: entry.to_owned(),
                reason,
            };
            let (address, prefix) = match entry.split_once('/') {
                Some((address, prefix)) => (address, Some(prefix)),
                None => (entry, None),
            };
            let network: IpAddr = address.parse().map_err(|_| error("bad address"))?;
            let width = if network.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => width,
                Some(text) => text
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= width)
                    .ok_or_else(|| error("bad prefix length"))?,
            };
            if mask(network, prefix) != network {
                return Err(error("host bits set after the prefix"));
            }
            blocks.push(Block { network, prefix });
        }
        Ok(Self { blocks, unix })
    }

    /// Whether `peer` is trusted: an address in the list, or a Unix-socket peer when the list
    /// holds `unix`.
    pub fn trusts(&self, peer: Peer) -> bool {
        match peer {
            Peer::Ip(ip) => self.contains(ip),
            Peer::Unix => self.unix,
        }
    }

    /// Whether `peer` is in the list. An IPv4-mapped IPv6 peer (`::ffff:127.0.0.1`) is
    /// compared as the IPv4 address it is.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.blocks.iter().any(|block| {
            peer.is_ipv4() == block.network.is_ipv4() && mask(peer, block.prefix) == block.network
        })
    }

    /// Whether the list is empty (then no forwarded header is ever trusted).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && !self.unix
    }
}

/// `address` with every bit after `prefix` cleared.
fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & kept).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_and_single_addresses_match() {
        let list = TrustedProxies::parse(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]).unwrap();
        assert!(list.contains(ip("10.255.0.1")));
        assert!(list.contains(ip("192.168.1.7")));
        assert!(list.contains(ip("fd12::1")));
        assert!(!list.contains(ip("192.168.1.8")));
        assert!(!list.contains(ip("11.0.0.1")));
        assert!(!list.contains(ip("fe80::1")));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_blocks() {
        let list = TrustedProxies::parse(&["127.0.0.1"]).unwrap();
        assert!(list.contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn zero_prefix_means_everyone() {
        let list = TrustedProxies::parse(&["0.0.0.0/0"]).unwrap();
        assert!(list.contains(ip("8.8.8.8")));
        assert!(!list.contains(ip("::2")));
    }

    #[test]
    fn unix_peers_are_trusted_only_when_listed() {
        let without = TrustedProxies::parse(&["127.0.0.1"]).unwrap();
        assert!(!without.trusts(Peer::Unix));
        assert!(without.trusts(Peer::Ip(ip("127.0.0.1"))));
        let with = TrustedProxies::parse(&["unix"]).unwrap();
        assert!(with.trusts(Peer::Unix));
        assert!(!with.is_empty());
        // `unix` trusts no address: not loopback, not anything.
        assert!(!with.trusts(Peer::Ip(ip("127.0.0.1"))));
        assert!(TrustedProxies::parse(&["UNIX"]).is_err());
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "nope", "::1/129", "10.0.0.0/"] {
            let err = TrustedProxies::parse(&["127.0.0.1", bad]).unwrap_err();
            assert_eq!(err.index, 1, "{bad}");
        }
    }
}
