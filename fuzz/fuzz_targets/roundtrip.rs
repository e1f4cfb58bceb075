//! Whatever parses must re-encode byte for byte (the option encoding has one
//! form per value), unless a known option's value is over-long, and the
//! re-encoded message must parse back to the same owned message.
#![no_main]

use coap_codec::{CodecSettings, EncodeError, MessageRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let settings = CodecSettings::DEFAULT.with_extended_tokens(65804);
    let Ok(view) = MessageRef::parse_with(data, &settings) else {
        return;
    };
    let msg = view.to_message();
    match msg.to_bytes_with(&settings) {
        Ok(wire) => {
            assert_eq!(&wire[..], data);
            assert_eq!(wire.len(), msg.encoded_len());
            let back = MessageRef::parse_with(&wire, &settings)
                .unwrap()
                .to_message();
            assert_eq!(back, msg);
        }
        Err(EncodeError::OptionValueTooLong { number, len, max }) => {
            assert!(number.is_known() && len > max);
        }
        Err(e) => panic!("parsed message failed to encode: {e}"),
    }
});
