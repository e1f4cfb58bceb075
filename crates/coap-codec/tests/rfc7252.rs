#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Wire examples from RFC 7252 (§3 message format, Appendix A figures),
//! RFC 7959, RFC 8974 and RFC 8323, decoded and re-encoded byte for byte.

use bytes::Bytes;
use coap_codec::{
    Block, Code, CodecSettings, ContentFormat, EncodeError, Message, MessageRef, MessageType,
    OptionNumber, TcpFrameRef, tcp_frame_len,
};

fn roundtrip(wire: &[u8]) -> Message {
    let view = MessageRef::parse(wire).unwrap();
    let owned = view.to_message();
    assert_eq!(owned.encoded_len(), wire.len());
    assert_eq!(owned.to_bytes().unwrap(), wire, "re-encoding differs");
    assert_eq!(
        Message::from_bytes(Bytes::copy_from_slice(wire)).unwrap(),
        owned
    );
    owned
}

#[test]
fn figure_16_get_and_piggybacked_response() {
    // RFC 7252 Appendix A, Figure 16: CON GET /temperature, MID 0x7d34, no token.
    let mut req = vec![0x40, 0x01, 0x7d, 0x34, 0xbb];
    req.extend_from_slice(b"temperature");
    let view = MessageRef::parse(&req).unwrap();
    assert_eq!(view.mtype(), MessageType::Con);
    assert_eq!(view.code(), Code::GET);
    assert_eq!(view.message_id(), 0x7d34);
    assert!(view.token().is_empty());
    assert_eq!(
        view.uri_path().collect::<Vec<_>>(),
        vec![&b"temperature"[..]]
    );
    assert!(view.payload().is_empty());
    roundtrip(&req);

    // ACK 2.05 "22.3 C".
    let mut resp = vec![0x60, 0x45, 0x7d, 0x34, 0xff];
    resp.extend_from_slice(b"22.3 C");
    let view = MessageRef::parse(&resp).unwrap();
    assert_eq!(view.mtype(), MessageType::Ack);
    assert_eq!(view.code(), Code::CONTENT);
    assert_eq!(view.payload(), b"22.3 C");
    assert_eq!(view.option_count(), 0);
    roundtrip(&resp);
}

#[test]
fn figure_17_with_token() {
    // RFC 7252 Appendix A, Figure 17: token 0x20.
    let mut req = vec![0x41, 0x01, 0x7d, 0x34, 0x20, 0xbb];
    req.extend_from_slice(b"temperature");
    let view = MessageRef::parse(&req).unwrap();
    assert_eq!(view.token(), &[0x20]);
    roundtrip(&req);
    let built = Message::new(MessageType::Con, Code::GET, 0x7d34)
        .with_token(&[0x20][..])
        .with_uri_path("/temperature");
    assert_eq!(built.to_bytes().unwrap(), req);
}

#[test]
fn figure_7_header_fields_and_empty_messages() {
    // §3 Figure 7: Ver=1, T, TKL | Code | Message ID; empty ACK and RST are 4 bytes.
    let ack = Message::empty_ack(0xbeef).to_bytes().unwrap();
    assert_eq!(&ack[..], &[0x60, 0x00, 0xbe, 0xef]);
    let rst = Message::reset(1).to_bytes().unwrap();
    assert_eq!(&rst[..], &[0x70, 0x00, 0x00, 0x01]);
    let ping = MessageRef::parse(&[0x40, 0x00, 0x12, 0x34]).unwrap();
    assert!(ping.is_ping());
    assert!(!MessageRef::parse(&ack).unwrap().is_ping());
    roundtrip(&[0x50, 0x02, 0xff, 0xff]);
}

#[test]
fn figure_8_option_delta_and_length_extensions() {
    // §3.1 Figure 8: delta 13 → 1 extra byte (value-13), 14 → 2 extra bytes (value-269).
    let msg = Message::new(MessageType::Non, Code::POST, 7)
        .with_uint_option(OptionNumber::SIZE1, 1500) // delta 60 → 0xd?, ext 47
        .with_option(OptionNumber(1000), vec![0xaa; 13]) // delta 940 → 14, len 13 → 13
        .with_option(OptionNumber(1000), vec![0xbb; 300]) // delta 0, len 300 → 14
        .with_payload(&b"x"[..]);
    let wire = msg.to_bytes().unwrap();
    assert_eq!(&wire[..4], &[0x50, 0x02, 0x00, 0x07]);
    // Size1: delta 60 = 13 + 47, length 2.
    assert_eq!(&wire[4..8], &[0xd2, 47, 0x05, 0xdc]);
    // Option 1000: delta 940 = 269 + 671 (0x029f), length 13 = 13 + 0.
    assert_eq!(&wire[8..12], &[0xed, 0x02, 0x9f, 0x00]);
    assert_eq!(&wire[12..25], &[0xaa; 13]);
    // Repeat of 1000: delta 0, length 300 = 269 + 31.
    assert_eq!(&wire[25..28], &[0x0e, 0x00, 31]);
    let back = roundtrip(&wire);
    assert_eq!(back, msg);
    assert_eq!(back.size1(), Some(1500));
    assert_eq!(back.options_of(OptionNumber(1000)).count(), 2);
}

#[test]
fn options_sorted_and_repeats_stable() {
    let msg = Message::new(MessageType::Con, Code::POST, 1)
        .with_token(&b"tok"[..])
        .with_uri_query("b=2")
        .with_content_format(ContentFormat::JSON)
        .with_uri_path("ps/a/b")
        .with_uri_query("a=1")
        .with_option(OptionNumber(2049), &b"unknown"[..]);
    let numbers: Vec<u16> = msg.options().map(|o| o.number.0).collect();
    assert_eq!(numbers, vec![11, 11, 11, 12, 15, 15, 2049]);
    let wire = msg.to_bytes().unwrap();
    let view = MessageRef::parse(&wire).unwrap();
    assert_eq!(
        view.uri_path().collect::<Vec<_>>(),
        vec![&b"ps"[..], &b"a"[..], &b"b"[..]]
    );
    assert_eq!(
        view.uri_query().collect::<Vec<_>>(),
        vec![&b"b=2"[..], &b"a=1"[..]]
    );
    assert_eq!(view.query_param("a").unwrap().value, Some(&b"1"[..]));
    assert_eq!(view.content_format(), Some(ContentFormat::JSON));
    assert_eq!(view.option(OptionNumber(2049)), Some(&b"unknown"[..]));
    assert_eq!(
        coap_codec::uri::join_path(view.uri_path()).unwrap(),
        "ps/a/b"
    );
    assert_eq!(view.to_message(), msg);
}

#[test]
fn observe_and_block_typed_options() {
    let msg = Message::new(MessageType::Ack, Code::CONTENT, 9)
        .with_token(&b"\x01"[..])
        .with_observe(0x0100_0005)
        .with_block2(Block::new(3, true, 6).unwrap())
        .with_uint_option(OptionNumber::SIZE2, 4096)
        .with_payload(vec![0u8; 1024]);
    let wire = msg.to_bytes().unwrap();
    let view = MessageRef::parse(&wire).unwrap();
    assert_eq!(view.observe(), Some(5));
    assert_eq!(
        view.block2(),
        Some(Block {
            num: 3,
            more: true,
            szx: 6
        })
    );
    assert_eq!(view.block2().unwrap().offset(), 3072);
    assert_eq!(view.size2(), Some(4096));
    assert_eq!(view.payload().len(), 1024);
}

#[test]
fn encode_errors_instead_of_panics() {
    let long_token = Message::new(MessageType::Con, Code::GET, 1).with_token(vec![1u8; 9]);
    assert_eq!(
        long_token.to_bytes(),
        Err(EncodeError::TokenTooLong { len: 9, max: 8 })
    );
    let block = Message::new(MessageType::Con, Code::GET, 1)
        .with_option(OptionNumber::BLOCK2, vec![1u8; 4]);
    assert_eq!(
        block.to_bytes(),
        Err(EncodeError::OptionValueTooLong {
            number: OptionNumber::BLOCK2,
            len: 4,
            max: 3
        })
    );
    let huge = Message::new(MessageType::Con, Code::GET, 1)
        .with_option(OptionNumber(2048), vec![0u8; 65805]);
    assert!(matches!(
        huge.to_bytes(),
        Err(EncodeError::OptionValueTooLong { max: 65804, .. })
    ));
    let empty = Message::new(MessageType::Con, Code::EMPTY, 1).with_payload(&b"x"[..]);
    assert_eq!(empty.to_bytes(), Err(EncodeError::NonEmptyEmptyMessage));
    let reserved = Message::new(MessageType::Con, Code::new(6, 1), 1);
    assert!(matches!(
        reserved.to_bytes(),
        Err(EncodeError::ReservedCodeClass { .. })
    ));
    let ok = Message::new(MessageType::Con, Code::GET, 1).with_uri_path("abc");
    let mut small = [0u8; 4];
    let mut dst = &mut small[..];
    assert_eq!(
        ok.encode(&mut dst),
        Err(EncodeError::BufferTooSmall {
            needed: 8,
            available: 4
        })
    );
    assert_eq!(small, [0u8; 4], "nothing written on error");
}

#[test]
fn rfc_8974_extended_tokens() {
    let ext = CodecSettings::DEFAULT.with_extended_tokens(1000);
    for len in [9usize, 12, 13, 200, 268, 269, 1000] {
        let msg = Message::new(MessageType::Con, Code::GET, 5).with_token(vec![0x5a; len]);
        let wire = msg.to_bytes_with(&ext).unwrap();
        let tkl = wire[0] & 0x0f;
        match len {
            9..=12 => assert_eq!(usize::from(tkl), len),
            13..=268 => {
                assert_eq!(tkl, 13);
                assert_eq!(usize::from(wire[4]) + 13, len);
            }
            _ => {
                assert_eq!(tkl, 14);
                assert_eq!(
                    usize::from(u16::from_be_bytes([wire[4], wire[5]])) + 269,
                    len
                );
            }
        }
        let view = MessageRef::parse_with(&wire, &ext).unwrap();
        assert_eq!(view.token().len(), len);
        assert_eq!(view.to_message().to_bytes_with(&ext).unwrap(), wire);
        assert!(
            MessageRef::parse(&wire).is_err(),
            "default settings reject TKL {tkl}"
        );
    }
    let too_long = Message::new(MessageType::Con, Code::GET, 5).with_token(vec![0; 1001]);
    assert_eq!(
        too_long.to_bytes_with(&ext),
        Err(EncodeError::TokenTooLong {
            len: 1001,
            max: 1000
        })
    );
}

#[test]
fn rfc_8323_tcp_frames() {
    let settings = CodecSettings::DEFAULT;
    let sizes = [0usize, 5, 12, 13, 268, 269, 65804, 65805, 70000];
    for payload_len in sizes {
        let msg = Message::new(MessageType::Con, Code::POST, 0)
            .with_token(&b"ab"[..])
            .with_uri_path("x");
        let msg = if payload_len > 0 {
            msg.with_payload(vec![7u8; payload_len])
        } else {
            msg
        };
        let wire = msg.to_tcp_bytes(&settings).unwrap();
        assert_eq!(wire.len(), msg.tcp_encoded_len());
        assert_eq!(tcp_frame_len(&wire), Some(wire.len() as u64));
        // Two frames back to back: the first parse consumes exactly one.
        let mut two = wire.to_vec();
        two.extend_from_slice(&wire);
        let (frame, used) = TcpFrameRef::parse_with(&two, &settings, 1 << 20).unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(frame.code(), Code::POST);
        assert_eq!(frame.token(), b"ab");
        assert_eq!(frame.payload().len(), payload_len);
        assert_eq!(frame.to_message(), msg);
    }
    // RFC 8323 §5.4 Ping signaling message: Len 0, TKL 0, code 7.02.
    let (ping, used) = TcpFrameRef::parse(&[0x00, 0xe2]).unwrap();
    assert_eq!((ping.code(), used), (Code::PING, 2));
    assert_eq!(tcp_frame_len(&[0x00]), None);
    assert_eq!(tcp_frame_len(&[0xd0]), None);
    assert_eq!(tcp_frame_len(&[0xd0, 0x00, 0x01]), Some(16));
}

#[test]
fn benchmark_con_post_size_matches_docs() {
    // docs/benchmarks.md states the CON POST benchmark message is 122 bytes.
    let msg = Message::new(MessageType::Con, Code::POST, 0x7d34)
        .with_token(&[0x4a, 0x11, 0x9c, 0x02][..])
        .with_uri_path("ps/sensors/temperature")
        .with_uri_query("c=client-0042")
        .with_uri_query("u=device")
        .with_content_format(ContentFormat::JSON)
        .with_payload(vec![b'7'; 64]);
    assert_eq!(msg.encoded_len(), 122);
    assert_eq!(msg.to_bytes().unwrap().len(), 122);
}
