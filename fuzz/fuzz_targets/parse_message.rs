//! Parse arbitrary datagrams (default and RFC 8974 settings) and read
//! everything the hot path reads; nothing may panic.
#![no_main]

use coap_codec::{CodecSettings, MessageRef, peek_header, validate_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = peek_header(data);
    for settings in [
        CodecSettings::DEFAULT,
        CodecSettings::DEFAULT.with_extended_tokens(65804),
    ] {
        match MessageRef::parse_with(data, &settings) {
            Ok(msg) => {
                let n = msg.options().count();
                assert_eq!(n, msg.option_count());
                let _ = (
                    msg.block1(),
                    msg.block2(),
                    msg.observe(),
                    msg.content_format(),
                );
                let _ = coap_codec::uri::join_path(msg.uri_path());
                let _ = msg.query_param("c");
                if msg.code().is_request() {
                    let _ = validate_request(&msg);
                }
            }
            Err(e) => {
                // Errors after the header must leave the header readable.
                if e.offset().is_some_and(|o| o >= 4) {
                    assert!(peek_header(data).is_some());
                }
            }
        }
    }
});
