//! Fuzzes the DTLS record / ClientHello parser of `coap-dtls` (the only DTLS
//! bytes the crate parses itself, before OpenSSL sees anything) and the
//! stateless server path behind it.
//!
//! Properties: parsing never panics; a parsed ClientHello's fields respect
//! their wire bounds; the HelloVerifyRequest built for it parses back with the
//! ClientHello's record sequence number; a `DtlsServer` fed the bytes never
//! panics and keeps no state for a peer that has no valid cookie.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use coap_dtls::record::{self, ClientHello};
use coap_dtls::{DtlsServer, ServerConfig};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static SERVER: RefCell<DtlsServer> = RefCell::new({
        let mut keys = HashMap::new();
        keys.insert(b"fuzz".to_vec(), b"fuzz-key".to_vec());
        DtlsServer::new(ServerConfig::new(Arc::new(keys)), Instant::now())
            .expect("server config")
    });
}

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = ClientHello::parse_datagram(data) {
        assert!(hello.session_id.len() <= 32);
        assert!(hello.cookie.len() <= record::MAX_COOKIE_LEN);
        assert!(hello.cipher_suites.len() >= 2 && hello.cipher_suites.len() % 2 == 0);
        assert!(hello.record_sequence_number < 1 << 48);
        let hvr = record::hello_verify_request(hello.record_sequence_number, hello.cookie)
            .expect("cookie fits");
        let (rest, rec) = record::parse_record(&hvr).expect("own HelloVerifyRequest parses");
        assert!(rest.is_empty());
        assert_eq!(rec.sequence_number, hello.record_sequence_number);
    }

    // Walk all records of the datagram.
    let mut rest = data;
    while let Ok((next, rec)) = record::parse_record(rest) {
        assert!(rec.fragment.len() <= u16::MAX as usize);
        if next.len() >= rest.len() {
            break;
        }
        rest = next;
    }

    SERVER.with(|server| {
        let mut server = server.borrow_mut();
        let peer = "192.0.2.7:5684".parse().expect("address");
        server.handle_datagram(Instant::now(), peer, data);
        while server.poll_transmit().is_some() {}
        while server.poll_event().is_some() {}
        // Without a cookie the server minted, no session can exist.
        assert_eq!(server.stats().sessions, 0);
    });
});
