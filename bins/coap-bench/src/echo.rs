//! `udp-echo`: reflects every datagram to its sender unchanged — the
//! "kernel ceiling" reference for the load generator (a client sees its own
//! request, same message id and token, as the response).
//!
//! One blocking thread per core, each with its own socket bound to the same
//! address with `SO_REUSEPORT`, so the kernel spreads senders (by 4-tuple
//! hash) over the threads.

use std::net::{SocketAddr, UdpSocket};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

/// Binds `threads` sockets on `listen`, prints `udp-echo listening on ADDR`
/// on stdout, and serves until the process ends.
pub(crate) fn serve(listen: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let first = bind_reuseport(listen).with_context(|| format!("cannot bind {listen}"))?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads.max(1) {
        sockets.push(bind_reuseport(bound).with_context(|| format!("cannot bind {bound}"))?);
    }
    println!("udp-echo listening on {bound}");
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|socket| std::thread::spawn(move || reflect(&socket)))
        .collect();
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

fn reflect(socket: &UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let _ = socket.send_to(buf.get(..n).unwrap_or_default(), peer);
            }
            // ICMP errors from earlier sends surface here; keep serving.
            Err(_) => continue,
        }
    }
}

fn bind_reuseport(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
