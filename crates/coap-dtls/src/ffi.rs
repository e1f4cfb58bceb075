//! The OpenSSL calls the `openssl` crate does not wrap: `DTLSv1_listen`,
//! the DTLS retransmission timer (`DTLSv1_get_timeout`,
//! `DTLSv1_handle_timeout`, `DTLS_set_timer_cb`),
//! `SSL_CTX_use_psk_identity_hint`, `SSL_SESSION_get_max_fragment_length`
//! and `OPENSSL_cleanse`.
//!
//! This is the only module of the crate with `unsafe` code. The functions are
//! declared here against OpenSSL 3.0's `ssl.h`; `openssl-sys` links libssl.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_long, c_uint, c_void};
use std::io::{Read, Write};
use std::ptr;
use std::sync::OnceLock;
use std::time::Duration;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContextBuilder, SslRef, SslStream};

/// `DTLS_CTRL_GET_TIMEOUT` from `ssl.h`.
const DTLS_CTRL_GET_TIMEOUT: c_int = 73;
/// `DTLS_CTRL_HANDLE_TIMEOUT` from `ssl.h`.
const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;

/// `struct timeval` on Linux/glibc (both fields are `long`).
#[repr(C)]
struct Timeval {
    tv_sec: c_long,
    tv_usec: c_long,
}

/// Opaque `BIO_ADDR`.
#[repr(C)]
struct BioAddr {
    _private: [u8; 0],
}

type DtlsTimerCb = unsafe extern "C" fn(s: *mut openssl_sys::SSL, timer_us: c_uint) -> c_uint;

unsafe extern "C" {
    fn DTLSv1_listen(s: *mut openssl_sys::SSL, client: *mut BioAddr) -> c_int;
    fn BIO_ADDR_new() -> *mut BioAddr;
    fn BIO_ADDR_free(addr: *mut BioAddr);
    fn DTLS_set_timer_cb(s: *mut openssl_sys::SSL, cb: Option<DtlsTimerCb>);
    fn SSL_free_buffers(ssl: *mut openssl_sys::SSL) -> c_int;
    fn SSL_alloc_buffers(ssl: *mut openssl_sys::SSL) -> c_int;
    fn DTLS_get_data_mtu(s: *const openssl_sys::SSL) -> usize;
    fn SSL_CTX_use_psk_identity_hint(ctx: *mut openssl_sys::SSL_CTX, hint: *const c_char) -> c_int;
    fn OPENSSL_cleanse(ptr: *mut c_void, len: usize);
    fn SSL_SESSION_get_max_fragment_length(s: *const openssl_sys::SSL_SESSION) -> u8;
    #[cfg(test)]
    fn SSL_set_tlsext_max_fragment_length(ssl: *mut openssl_sys::SSL, mode: u8) -> c_int;
}

/// The plaintext limit the peer asked for with the max_fragment_length
/// extension (RFC 6066 §4) in the established session, if any
/// (`SSL_SESSION_get_max_fragment_length`).
pub(crate) fn max_fragment_length(ssl: &SslRef) -> Option<usize> {
    let session = ssl.session()?;
    // SAFETY: the session is valid for the duration of the borrow; the call
    // only reads it.
    let code = unsafe { SSL_SESSION_get_max_fragment_length(session.as_ptr()) };
    match code {
        1..=4 => Some(256 << code),
        _ => None,
    }
}

/// Makes a client ask for max_fragment_length `512 << (mode - 1)`
/// (`SSL_set_tlsext_max_fragment_length`); for tests.
#[cfg(test)]
pub(crate) fn request_max_fragment_length(ssl: &mut SslRef, mode: u8) -> bool {
    // SAFETY: the SSL object is valid and exclusively borrowed.
    unsafe { SSL_set_tlsext_max_fragment_length(ssl.as_ptr(), mode) == 1 }
}

/// Overwrites `buf` with zeros in a way the compiler does not remove
/// (`OPENSSL_cleanse`): for key material that is about to be dropped.
pub(crate) fn cleanse(buf: &mut [u8]) {
    // SAFETY: `buf` is a valid, exclusively borrowed region of `buf.len()`
    // bytes; OPENSSL_cleanse only writes inside it.
    unsafe { OPENSSL_cleanse(buf.as_mut_ptr().cast::<c_void>(), buf.len()) };
}

/// Retransmission timer of one DTLS session: the first timeout and the cap
/// of the doubling back-off (RFC 6347 §4.2.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetransmitTimer {
    pub(crate) initial_us: u32,
    pub(crate) max_us: u32,
}

fn timer_index() -> Result<Index<Ssl, RetransmitTimer>, ErrorStack> {
    static INDEX: OnceLock<Result<Index<Ssl, RetransmitTimer>, ErrorStack>> = OnceLock::new();
    INDEX.get_or_init(Ssl::new_ex_index).clone()
}

/// Installs the retransmission timer policy on `ssl` (via
/// `DTLS_set_timer_cb`) instead of OpenSSL's fixed 1 s initial timeout.
pub(crate) fn set_retransmit_timer(
    ssl: &mut SslRef,
    timer: RetransmitTimer,
) -> Result<(), ErrorStack> {
    ssl.set_ex_data(timer_index()?, timer);
    // SAFETY: `ssl` is a valid SSL object; the callback is a plain function
    // that only reads ex-data of the SSL it is handed.
    unsafe { DTLS_set_timer_cb(ssl.as_ptr(), Some(timer_callback)) };
    Ok(())
}

/// OpenSSL calls this with `timer_us == 0` for the first timeout of a
/// flight and with the previous timeout after each expiry.
unsafe extern "C" fn timer_callback(s: *mut openssl_sys::SSL, timer_us: c_uint) -> c_uint {
    let policy = timer_index().ok().and_then(|index| {
        // SAFETY: OpenSSL passes the SSL object whose timer fires; it is
        // alive for the duration of the call.
        let ssl = unsafe { SslRef::from_ptr(s) };
        ssl.ex_data(index).copied()
    });
    let policy = policy.unwrap_or(RetransmitTimer {
        initial_us: 1_000_000,
        max_us: 60_000_000,
    });
    if timer_us == 0 {
        policy.initial_us
    } else {
        timer_us.saturating_mul(2).min(policy.max_us)
    }
}

/// Time left on the handshake retransmission timer, if it runs
/// (`DTLSv1_get_timeout`). OpenSSL reads the wall clock here.
pub(crate) fn retransmit_timeout<S>(stream: &SslStream<S>) -> Option<Duration> {
    let mut tv = Timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: the SSL object is valid; for this command OpenSSL writes one
    // `struct timeval` through `parg`, which points at `tv`.
    let running = unsafe {
        openssl_sys::SSL_ctrl(
            stream.ssl().as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0,
            (&mut tv as *mut Timeval).cast::<c_void>(),
        )
    };
    if running <= 0 {
        return None;
    }
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0);
    Some(Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// The largest plaintext one record can carry within the MTU under the
/// negotiated cipher suite (`DTLS_get_data_mtu`); `None` before a suite is
/// negotiated.
pub(crate) fn data_mtu<S>(stream: &SslStream<S>) -> Option<usize> {
    // SAFETY: the SSL object is valid; the call only reads it.
    let mtu = unsafe { DTLS_get_data_mtu(stream.ssl().as_ptr()) };
    (mtu > 0).then_some(mtu)
}

/// Frees the session's record-layer read and write buffers if nothing is
/// pending in them (`SSL_free_buffers`); OpenSSL allocates them again on the
/// next read, but its DTLS write path does not: call [`alloc_buffers`] before
/// any call that may write. (`SSL_MODE_RELEASE_BUFFERS` does not cover DTLS.)
pub(crate) fn free_buffers<S: Read + Write>(stream: &mut SslStream<S>) -> bool {
    // SAFETY: the SSL object is valid and exclusively borrowed; OpenSSL only
    // frees buffers that hold no pending data (fixed for DTLS since 3.0.14,
    // CVE-2024-4741).
    unsafe { SSL_free_buffers(stream.ssl().as_ptr()) == 1 }
}

/// Allocates the record buffers again after [`free_buffers`]
/// (`SSL_alloc_buffers`); true on success.
pub(crate) fn alloc_buffers<S: Read + Write>(stream: &mut SslStream<S>) -> bool {
    // SAFETY: the SSL object is valid and exclusively borrowed.
    unsafe { SSL_alloc_buffers(stream.ssl().as_ptr()) == 1 }
}

/// What `DTLSv1_handle_timeout` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeoutOutcome {
    /// The timer had not expired (or did not run): nothing sent.
    NotExpired,
    /// The last flight was retransmitted (written to the BIO).
    Retransmitted,
    /// OpenSSL gave up (too many retransmissions) or failed.
    Failed,
}

/// Lets OpenSSL retransmit the last flight if its timer expired
/// (`DTLSv1_handle_timeout`). Needs `&mut` because the BIO is written.
pub(crate) fn handle_retransmit_timeout<S: Read + Write>(
    stream: &mut SslStream<S>,
) -> TimeoutOutcome {
    // SAFETY: the SSL object is valid and its BIO (the stream) is alive and
    // exclusively borrowed for the duration of the call.
    let rc = unsafe {
        openssl_sys::SSL_ctrl(
            stream.ssl().as_ptr(),
            DTLS_CTRL_HANDLE_TIMEOUT,
            0,
            ptr::null_mut(),
        )
    };
    match rc {
        0 => TimeoutOutcome::NotExpired,
        n if n > 0 => TimeoutOutcome::Retransmitted,
        _ => TimeoutOutcome::Failed,
    }
}

/// Runs `DTLSv1_listen` on a fresh server `Ssl` whose BIO holds a ClientHello
/// that carries a cookie this crate already verified. OpenSSL then accepts it
/// (the cookie verify callback answers yes), sets the handshake and record
/// sequence numbers to continue after the HelloVerifyRequest exchange
/// (RFC 6347 §4.2.2) and buffers the record for `SSL_accept`.
///
/// Returns `Ok(true)` when the session may continue with `accept`, `Ok(false)`
/// when OpenSSL did not take the datagram.
pub(crate) fn listen<S: Read + Write>(stream: &mut SslStream<S>) -> Result<bool, ErrorStack> {
    // SAFETY: BIO_ADDR_new returns an owned, zeroed address or NULL.
    let addr = unsafe { BIO_ADDR_new() };
    if addr.is_null() {
        return Err(ErrorStack::get());
    }
    // SAFETY: the SSL object is valid, its BIO is alive and exclusively
    // borrowed, `addr` is a valid BIO_ADDR that DTLSv1_listen may write.
    let rc = unsafe { DTLSv1_listen(stream.ssl().as_ptr(), addr) };
    // SAFETY: `addr` came from BIO_ADDR_new and is freed once.
    unsafe { BIO_ADDR_free(addr) };
    match rc {
        1 => Ok(true),
        0 => Ok(false),
        _ => Err(ErrorStack::get()),
    }
}

/// Sets the PSK identity hint a server sends in ServerKeyExchange
/// (RFC 4279 §2).
pub(crate) fn set_psk_identity_hint(
    builder: &mut SslContextBuilder,
    hint: &CStr,
) -> Result<(), ErrorStack> {
    // SAFETY: the context is valid; OpenSSL copies the NUL-terminated hint.
    let rc = unsafe { SSL_CTX_use_psk_identity_hint(builder.as_ptr(), hint.as_ptr()) };
    if rc == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}
