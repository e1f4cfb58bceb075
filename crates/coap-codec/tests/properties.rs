#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Property tests: encode → parse → equal; parse never panics; parse →
//! encode is byte-identical for every input the encoder can represent
//! (the RFC 7252 option encoding has exactly one form per value, so every
//! well-formed message is canonical).

use bytes::Bytes;
use coap_codec::{
    Code, CodecSettings, EncodeError, Message, MessageRef, MessageType, OptionNumber, TcpFrameRef,
    peek_header, tcp_frame_len, uri, validate_request,
};
use proptest::prelude::*;

fn mtype() -> impl Strategy<Value = MessageType> {
    (0u8..4).prop_map(MessageType::from_bits)
}

/// Non-empty codes in the classes a UDP message may carry.
fn code() -> impl Strategy<Value = Code> {
    prop_oneof![
        (1u8..32).prop_map(|d| Code::new(0, d)),
        (0u8..32).prop_map(|d| Code::new(2, d)),
        (0u8..32).prop_map(|d| Code::new(4, d)),
        (0u8..32).prop_map(|d| Code::new(5, d)),
    ]
}

/// An option number (known or arbitrary) and a value its format allows.
fn option() -> impl Strategy<Value = (OptionNumber, Vec<u8>)> {
    let number = prop_oneof![
        3 => proptest::sample::select(OptionNumber::KNOWN.to_vec()),
        1 => any::<u16>().prop_map(OptionNumber),
        1 => (0u16..300).prop_map(OptionNumber),
    ];
    number.prop_flat_map(|n| {
        let max = n.definition().map_or(400, |d| d.max_len.min(400));
        (Just(n), proptest::collection::vec(any::<u8>(), 0..=max))
    })
}

prop_compose! {
    fn message(max_token: usize)(
        mtype in mtype(),
        code in code(),
        message_id in any::<u16>(),
        token in proptest::collection::vec(any::<u8>(), 0..=max_token),
        options in proptest::collection::vec(option(), 0..12),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) -> Message {
        let mut msg = Message::new(mtype, code, message_id).with_token(token).with_payload(payload);
        for (n, v) in options {
            msg.add_option(n, v);
        }
        msg
    }
}

/// Bytes that start with a plausible header, so that parsing gets past it often.
fn near_valid_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..4,
        0u8..9,
        code(),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..120),
    )
        .prop_map(|(t, tkl, code, mid, rest)| {
            let mut v = vec![0x40 | (t << 4) | tkl, code.to_u8()];
            v.extend_from_slice(&mid.to_be_bytes());
            v.extend_from_slice(&rest);
            v
        })
}

fn exercise(view: &MessageRef<'_>) {
    let mut n = 0u32;
    for o in view.options() {
        assert!(u32::from(o.number.0) >= n);
        n = u32::from(o.number.0);
    }
    assert_eq!(view.options().count(), view.option_count());
    let _ = (
        view.block1(),
        view.block2(),
        view.observe(),
        view.content_format(),
        view.size1(),
    );
    let _ = uri::join_path(view.uri_path());
    let _ = view.query_param("c");
    if view.code().is_request() {
        let _ = validate_request(view);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_parse_gives_the_same_message(msg in message(8)) {
        let wire = msg.to_bytes().unwrap();
        prop_assert_eq!(wire.len(), msg.encoded_len());
        let view = MessageRef::parse(&wire).unwrap();
        prop_assert_eq!(view.to_message(), msg.clone());
        prop_assert_eq!(Message::from_bytes(wire.clone()).unwrap(), msg.clone());
        // And the TCP framing of the same message.
        let frame = msg.to_tcp_bytes(&CodecSettings::DEFAULT).unwrap();
        prop_assert_eq!(tcp_frame_len(&frame), Some(frame.len() as u64));
        let (f, used) = TcpFrameRef::parse(&frame).unwrap();
        prop_assert_eq!(used, frame.len());
        let back = f.to_message();
        prop_assert_eq!(back.code, msg.code);
        prop_assert_eq!(&back.token, &msg.token);
        prop_assert_eq!(back.option_list(), msg.option_list());
        prop_assert_eq!(&back.payload, &msg.payload);
    }

    #[test]
    fn encode_then_parse_with_extended_tokens(msg in message(400)) {
        let settings = CodecSettings::DEFAULT.with_extended_tokens(400);
        let wire = msg.to_bytes_with(&settings).unwrap();
        let view = MessageRef::parse_with(&wire, &settings).unwrap();
        prop_assert_eq!(view.to_message(), msg.clone());
        if msg.token.len() > 8 {
            prop_assert!(msg.to_bytes().is_err());
            prop_assert!(MessageRef::parse(&wire).is_err());
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = peek_header(&bytes);
        for settings in [CodecSettings::DEFAULT, CodecSettings::DEFAULT.with_extended_tokens(65804)] {
            if let Ok(view) = MessageRef::parse_with(&bytes, &settings) {
                exercise(&view);
            }
            if let Ok((frame, used)) = TcpFrameRef::parse_with(&bytes, &settings, 1 << 16) {
                prop_assert!(used <= bytes.len());
                let _ = frame.options().count();
            }
        }
        let _ = tcp_frame_len(&bytes);
    }

    #[test]
    fn parse_then_encode_is_byte_identical(bytes in near_valid_bytes()) {
        if let Ok(view) = MessageRef::parse(&bytes) {
            exercise(&view);
            let msg = view.to_message();
            match msg.to_bytes() {
                Ok(wire) => prop_assert_eq!(&wire[..], &bytes[..]),
                // The only thing the encoder refuses that the parser accepts:
                // a known option whose value is longer than registered.
                Err(EncodeError::OptionValueTooLong { number, len, max }) => {
                    prop_assert!(number.is_known());
                    prop_assert!(len > max);
                }
                Err(e) => prop_assert!(false, "unexpected encode error {e}"),
            }
        }
    }

    #[test]
    fn parse_error_after_header_still_has_header(bytes in near_valid_bytes()) {
        if MessageRef::parse(&bytes).is_err() {
            let h = peek_header(&bytes).unwrap();
            prop_assert_eq!(u16::from_be_bytes([bytes[2], bytes[3]]), h.message_id);
        }
    }

    #[test]
    fn uri_path_split_join_round_trip(segments in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..6)) {
        let joined = uri::join_path_encoded(segments.iter().map(|s| &s[..]));
        let back: Vec<Vec<u8>> = uri::split_path(&joined).map(|r| r.unwrap().into_owned()).collect();
        // An all-empty single segment joins to "/" which means "no segments".
        if segments.len() == 1 && segments[0].is_empty() {
            prop_assert!(back.is_empty());
        } else {
            prop_assert_eq!(back, segments);
        }
    }

    #[test]
    fn uri_query_params(key in "[a-z]{1,8}", value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))) {
        let mut entry = key.as_bytes().to_vec();
        if let Some(v) = &value {
            entry.push(b'=');
            entry.extend_from_slice(v);
        }
        let msg = Message::new(MessageType::Con, Code::GET, 1)
            .with_option(OptionNumber::URI_QUERY, Bytes::from(entry));
        let wire = msg.to_bytes().unwrap();
        let view = MessageRef::parse(&wire).unwrap();
        let p = view.query_param(&key).unwrap();
        prop_assert_eq!(p.value, value.as_deref());
        let encoded = uri::join_query_encoded(view.uri_query());
        let back: Vec<Vec<u8>> = uri::split_query(&encoded).map(|r| r.unwrap().into_owned()).collect();
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(uri::split_query_param(&back[0]).value, value.as_deref());
    }
}

/// Guards the property above against being vacuous: a good share of the
/// near-valid inputs must actually parse and re-encode identically.
#[test]
fn near_valid_inputs_mostly_parse_and_reencode_identically() {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut parsed, mut identical, mut refused) = (0, 0, 0);
    for _ in 0..2000 {
        let tkl = (next() % 9) as u8;
        let mut bytes = vec![0x40 | tkl, 0x02, 0x12, 0x34];
        bytes.extend((0..tkl).map(|_| next() as u8));
        // Options with small deltas and lengths, sometimes a payload.
        for _ in 0..(next() % 5) {
            let len = (next() % 6) as u8;
            bytes.push(((next() % 13) as u8) << 4 | len);
            bytes.extend((0..len).map(|_| next() as u8));
        }
        if next() % 2 == 0 {
            bytes.push(0xff);
            bytes.extend((0..1 + next() % 10).map(|_| next() as u8));
        }
        if let Ok(view) = MessageRef::parse(&bytes) {
            parsed += 1;
            match view.to_message().to_bytes() {
                Ok(w) if w[..] == bytes[..] => identical += 1,
                Err(EncodeError::OptionValueTooLong { number, .. }) if number.is_known() => {
                    refused += 1
                }
                other => panic!("{bytes:02x?} re-encoded as {other:?}"),
            }
        }
    }
    assert_eq!(parsed, 2000, "all generated inputs are well-formed");
    assert_eq!(identical + refused, parsed);
    assert!(
        identical > 1000,
        "only {identical} of {parsed} re-encoded identically"
    );
}
