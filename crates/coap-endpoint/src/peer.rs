//! The transport-supplied key that names the other end of an exchange.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;

/// The other end of an exchange, as the transport names it: the socket
/// address and, for DTLS, the PSK identity that authenticated the session.
///
/// Two datagrams belong to the same peer only if both fields are equal, so
/// deduplication, observe relations and block-wise transfers never mix
/// state between a plain-UDP sender and a DTLS session at the same address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
