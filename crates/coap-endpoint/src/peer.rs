//! The transport-supplied key that names the other end of an exchange.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use bytes::Bytes;

/// The other end of an exchange, as the transport names it: the socket
/// address and, for DTLS, the PSK identity that authenticated the session.
///
/// Two datagrams belong to the same peer only if both fields are equal, so
/// deduplication, observe relations and block-wise transfers never mix
/// state between a plain-UDP sender and a DTLS session at the same address.
///
/// The hash covers the address only: a DTLS session's identity is fixed
/// for its address, so hashing the identity bytes too (4.4k instructions
/// per request with SipHash) bought nothing but cost; a UDP sender and a
/// DTLS session at one address merely share a bucket and still differ
/// under `Eq`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The peer's socket address.
    pub addr: SocketAddr,
    /// The authenticated identity (e.g. the DTLS PSK identity); `None` for
    /// plain UDP.
    pub identity: Option<Bytes>,
}

impl Peer {
    /// An unauthenticated peer (plain UDP).
    pub fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            identity: None,
        }
    }

    /// A peer authenticated as `identity`.
    pub fn authenticated(addr: SocketAddr, identity: impl Into<Bytes>) -> Peer {
        Peer {
            addr,
            identity: Some(identity.into()),
        }
    }
}

impl Hash for Peer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One word for IPv4 (address, port, a tag bit), three for IPv6: far
        // fewer hasher calls than the derived field-by-field hash.
        match self.addr {
            SocketAddr::V4(v4) => state
                .write_u64((1 << 48) | (u64::from(v4.ip().to_bits()) << 16) | u64::from(v4.port())),
            SocketAddr::V6(v6) => {
                state.write_u128(v6.ip().to_bits());
                state.write_u64(
                    (u64::from(v6.scope_id()) << 32)
                        ^ (u64::from(v6.flowinfo()) << 16)
                        ^ u64::from(v6.port()),
                );
            }
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Peer {
        Peer::new(addr)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.identity {
            Some(identity) => write!(f, "{}@{}", String::from_utf8_lossy(identity), self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}
