//! The in-memory datagram BIO under every `SslStream`: `read` hands OpenSSL
//! exactly one queued datagram, `write` takes exactly one datagram. OpenSSL's
//! DTLS code reads and writes whole datagrams through the BIO, so datagram
//! boundaries survive.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

/// Datagrams between the state machine and one OpenSSL session.
#[derive(Debug, Default)]
pub(crate) struct DatagramPipe {
    /// Received datagrams not yet read by OpenSSL.
    pub(crate) incoming: VecDeque<Vec<u8>>,
    /// Datagrams OpenSSL wrote, to be transmitted.
    pub(crate) outgoing: Vec<Vec<u8>>,
}

/// At most this many received datagrams wait for one session; more are
/// dropped (OpenSSL drains the queue on every call, so this only bounds a
/// burst inside one call).
pub(crate) const MAX_QUEUED_DATAGRAMS: usize = 16;

impl DatagramPipe {
    pub(crate) fn with_datagram(datagram: &[u8]) -> Self {
        let mut pipe = DatagramPipe::default();
        pipe.incoming.push_back(datagram.to_vec());
        pipe
    }

    /// Queues a datagram for OpenSSL; false if the queue is full.
    pub(crate) fn push(&mut self, datagram: &[u8]) -> bool {
        if self.incoming.len() >= MAX_QUEUED_DATAGRAMS {
            return false;
        }
        self.incoming.push_back(datagram.to_vec());
        true
    }

    /// Frees the queues' buffers (idle sessions keep no spare capacity).
    pub(crate) fn shrink(&mut self) {
        self.incoming.shrink_to_fit();
        self.outgoing.shrink_to_fit();
    }
}

impl Read for DatagramPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.incoming.pop_front() {
            // A datagram larger than OpenSSL's buffer is truncated, as a
            // datagram socket would do.
            Some(datagram) => {
                let n = datagram.len().min(buf.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), datagram.get(..n)) {
                    dst.copy_from_slice(src);
                }
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for DatagramPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
