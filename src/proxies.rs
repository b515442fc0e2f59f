//! Trusted proxies: which TCP peers may tell the verifier what request they are asking about
//! (SPEC §5 forward-auth).
//!
//! `X-Forwarded-Method`/`X-Forwarded-Uri` and `X-Original-Method`/`X-Original-URI` decide the
//! route, and so the requirement. They are honoured only when the connection comes from an
//! address in this list (CIDR blocks or single addresses; default loopback only); from anyone
//! else they are ignored. This module only parses and matches addresses; it knows no HTTP.

use std::net::IpAddr;

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
}

/// Why an entry of `trusted_proxies` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trusted_proxies[{index}]: `{entry}` is not an IP address or CIDR block ({reason})")]
pub struct ProxyListError {
    /// Position in the list, from 0.
    pub index: usize,
    /// The entry as written.
    pub entry: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl TrustedProxies {
    /// Parses entries such as `127.0.0.1`, `10.0.0.0/8`, `::1` or `fd00::/8`.
    ///
    /// # Errors
    ///
    /// [`ProxyListError`] naming the first bad entry. A block with host bits set
    /// (`10.0.0.1/8`) is refused: it usually means the operator meant something else.
    pub fn parse(entries: &[impl AsRef<str>]) -> Result<Self, ProxyListError> {
        let mut blocks = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref();
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
        Ok(Self { blocks })
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
        self.blocks.is_empty()
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
    fn bad_entries_are_named() {
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "nope", "::1/129", "10.0.0.0/"] {
            let err = TrustedProxies::parse(&["127.0.0.1", bad]).unwrap_err();
            assert_eq!(err.index, 1, "{bad}");
        }
    }
}
