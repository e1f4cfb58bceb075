//! Parse RFC 8323 frames from an arbitrary stream prefix; consumed length
//! must agree with `tcp_frame_len`, and a parsed frame must re-encode.
#![no_main]

use coap_codec::{CodecSettings, TcpFrameRef, tcp_frame_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let settings = CodecSettings::DEFAULT.with_extended_tokens(65804);
    let announced = tcp_frame_len(data);
    if let Ok((frame, used)) = TcpFrameRef::parse_with(data, &settings, 1 << 20) {
        assert_eq!(announced, Some(used as u64));
        let _ = frame.options().count();
        let msg = frame.to_message();
        if let Ok(wire) = msg.to_tcp_bytes(&settings) {
            assert_eq!(&wire[..], &data[..used]);
        }
    }
});
