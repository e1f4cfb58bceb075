#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! One test per row of the spec's malformed-input table, through
//! `Endpoint::handle_datagram`, asserting the exact reaction.

mod support;

use coap_endpoint::coap_codec::{Code, Message, MessageType, OptionNumber};
use coap_endpoint::{Event, response};
use support::{Script, config};

const MID: u16 = 0x1234;
const CON: u8 = 0x40;
const NON: u8 = 0x50;

fn script() -> Script {
    Script::new(config(1))
}

/// Header bytes: version 1, type bits, TKL, code, message id 0x1234.
fn header(type_bits: u8, tkl: u8, code: u8) -> Vec<u8> {
    vec![type_bits | tkl, code, 0x12, 0x34]
}

fn assert_rst(sent: &[Message]) {
    assert_eq!(sent.len(), 1, "exactly one reply: {sent:?}");
    assert_eq!(sent[0].mtype, MessageType::Rst);
    assert_eq!(sent[0].code, Code::EMPTY);
    assert_eq!(sent[0].message_id, MID);
    assert!(sent[0].token.is_empty() && sent[0].payload.is_empty());
}

fn assert_response(sent: &[Message], code: Code) -> Message {
    assert_eq!(sent.len(), 1, "exactly one reply: {sent:?}");
    assert_eq!(sent[0].code, code);
    assert_eq!(sent[0].mtype, MessageType::Ack, "piggybacked");
    assert_eq!(sent[0].message_id, MID);
    sent[0].clone()
}

fn no_app_event(s: &mut Script) {
    assert!(s.events().is_empty(), "nothing reaches the application");
}

#[test]
fn version_other_than_1_is_silently_dropped() {
    let mut s = script();
    for version in [0u8, 2, 3] {
        let bytes = [version << 6, 0x01, 0x12, 0x34];
        assert!(s.raw(&bytes).is_empty());
    }
    no_app_event(&mut s);
    assert_eq!(s.ep.stats().malformed.dropped, 3);
}

#[test]
fn shorter_than_a_header_is_dropped() {
    let mut s = script();
    assert!(s.raw(&[0x40, 0x01]).is_empty());
    assert!(s.raw(&[]).is_empty());
}

#[test]
fn token_length_9_to_15_con_is_reset_non_is_dropped() {
    for tkl in 9..=15u8 {
        let mut s = script();
        let mut bytes = header(CON, tkl, 0x01);
        bytes.extend(std::iter::repeat_n(0xAA, 16));
        assert_rst(&s.raw(&bytes));
        let mut bytes = header(NON, tkl, 0x01);
        bytes.extend(std::iter::repeat_n(0xAA, 16));
        assert!(s.raw(&bytes).is_empty());
        no_app_event(&mut s);
    }
}

#[test]
fn extended_tokens_are_accepted_when_enabled() {
    let mut cfg = config(1);
    cfg.extended_tokens = Some(32);
    let mut s = Script::new(cfg);
    // TKL 13: one extra byte holds length - 13.
    let mut bytes = header(CON, 13, 0x01);
    bytes.push(20 - 13);
    bytes.extend([0xAB; 20]);
    assert!(s.raw(&bytes).is_empty());
    let r = s.request();
    assert_eq!(r.message.token.len(), 20);
    s.ep.respond(s.now, r.id, response(Code::CONTENT)).unwrap();
    let t = s.ep.poll_transmit().unwrap();
    let settings = coap_endpoint::coap_codec::CodecSettings::DEFAULT.with_extended_tokens(32);
    let sent = Message::from_bytes_with(t.bytes, &settings).unwrap();
    assert_eq!(sent.token.len(), 20, "answer echoes the 20-byte token");
}

#[test]
fn reserved_code_classes_con_reset_non_dropped() {
    for code in [0x20u8, 0x25, 0xC0, 0xC1, 0xE0, 0xE1] {
        let mut s = script();
        assert_rst(&s.raw(&header(CON, 0, code)));
        assert!(s.raw(&header(NON, 0, code)).is_empty());
        no_app_event(&mut s);
    }
}

#[test]
fn empty_code_with_token_options_or_payload_is_reset() {
    let cases: [&[u8]; 3] = [&[0xAB], &[0xB1, b'a'], &[0xFF, b'x']];
    for (i, extra) in cases.iter().enumerate() {
        let mut s = script();
        let tkl = u8::from(i == 0);
        let mut bytes = header(CON, tkl, 0x00);
        bytes.extend_from_slice(extra);
        assert_rst(&s.raw(&bytes));
        let mut bytes = header(NON, tkl, 0x00);
        bytes.extend_from_slice(extra);
        assert_rst(&s.raw(&bytes));
        no_app_event(&mut s);
    }
}

#[test]
fn payload_marker_without_payload_con_reset_non_dropped() {
    let mut s = script();
    let mut con = header(CON, 0, 0x01);
    con.push(0xFF);
    assert_rst(&s.raw(&con));
    let mut non = header(NON, 0, 0x01);
    non.push(0xFF);
    assert!(s.raw(&non).is_empty());
    no_app_event(&mut s);
}

#[test]
fn option_nibble_15_con_reset_non_dropped() {
    for option in [[0xF1u8, 0x00], [0x1F, 0x00]] {
        let mut s = script();
        let mut con = header(CON, 0, 0x01);
        con.extend_from_slice(&option);
        assert_rst(&s.raw(&con));
        let mut non = header(NON, 0, 0x01);
        non.extend_from_slice(&option);
        assert!(s.raw(&non).is_empty());
        no_app_event(&mut s);
    }
}

#[test]
fn truncated_token_or_option_con_reset_non_dropped() {
    let truncated: [(u8, &[u8]); 3] = [
        (4, &[0x01, 0x02]), // token of 4 announced, 2 present
        (0, &[0xB3, b'a']), // Uri-Path of 3 announced, 1 present
        (0, &[0xD1]),       // extended delta byte missing
    ];
    for (tkl, rest) in truncated {
        let mut s = script();
        let mut con = header(CON, tkl, 0x01);
        con.extend_from_slice(rest);
        assert_rst(&s.raw(&con));
        let mut non = header(NON, tkl, 0x01);
        non.extend_from_slice(rest);
        assert!(s.raw(&non).is_empty());
        no_app_event(&mut s);
    }
}

#[test]
fn unknown_method_is_4_05() {
    let mut s = script();
    let sent = s.raw(&header(CON, 0, 0x1F)); // 0.31
    assert_response(&sent, Code::METHOD_NOT_ALLOWED);
    no_app_event(&mut s);
    // NON request: the answer is NON with a fresh id.
    let mut non = header(NON, 0, 0x1F);
    non[3] = 0x35; // another message id, not a duplicate
    let sent = s.raw(&non);
    assert_eq!(sent[0].code, Code::METHOD_NOT_ALLOWED);
    assert_eq!(sent[0].mtype, MessageType::Non);
    assert_ne!(sent[0].message_id, MID);
    assert_eq!(s.ep.stats().malformed.method_not_allowed, 2);
}

#[test]
fn unrecognised_critical_option_is_4_02_naming_it() {
    let mut s = script();
    let request = Message::new(MessageType::Con, Code::GET, MID)
        .with_token(&b"t"[..])
        .with_option(OptionNumber(65001), &b"x"[..]);
    let reply = assert_response(&s.send(&request), Code::BAD_OPTION);
    let text = String::from_utf8(reply.payload.to_vec()).unwrap();
    assert!(
        text.contains("65001"),
        "diagnostic names the option: {text}"
    );
    assert_eq!(&reply.token[..], b"t");
    no_app_event(&mut s);
}

#[test]
fn repeated_non_repeatable_critical_option_is_4_02() {
    let mut s = script();
    // Uri-Host "abc" twice (option 3, second with delta 0).
    let mut bytes = header(CON, 0, 0x01);
    bytes.extend_from_slice(&[0x33, b'a', b'b', b'c', 0x03, b'd', b'e', b'f']);
    let reply = assert_response(&s.raw(&bytes), Code::BAD_OPTION);
    assert!(String::from_utf8_lossy(&reply.payload).contains("Uri-Host"));
    no_app_event(&mut s);
}

#[test]
fn if_none_match_with_a_value_is_4_02() {
    let mut s = script();
    let mut bytes = header(CON, 0, 0x03); // PUT
    bytes.extend_from_slice(&[0x51, 0x00]); // If-None-Match (5), 1 byte
    assert_response(&s.raw(&bytes), Code::BAD_OPTION);
    no_app_event(&mut s);
}

#[test]
fn block_option_longer_than_3_bytes_is_4_02() {
    for (nibble, ext) in [(0xD4u8, 27u8 - 13), (0xD4, 23 - 13)] {
        let mut s = script();
        let mut bytes = header(CON, 0, 0x02);
        bytes.extend_from_slice(&[nibble, ext, 0, 0, 0, 0x16]);
        assert_response(&s.raw(&bytes), Code::BAD_OPTION);
        no_app_event(&mut s);
    }
}

#[test]
fn block_szx_7_in_a_request_is_4_00() {
    for number in [OptionNumber::BLOCK1, OptionNumber::BLOCK2] {
        let mut s = script();
        let request =
            Message::new(MessageType::Con, Code::POST, MID).with_option(number, &[0x07u8][..]);
        assert_response(&s.send(&request), Code::BAD_REQUEST);
        no_app_event(&mut s);
        assert_eq!(s.ep.stats().malformed.bad_request, 1);
    }
}

#[test]
fn unknown_or_repeated_elective_options_are_ignored() {
    let mut s = script();
    let request = Message::new(MessageType::Con, Code::GET, MID)
        .with_uri_path("x")
        .with_option(OptionNumber(65000), &b"e"[..])
        .with_uint_option(OptionNumber::CONTENT_FORMAT, 0)
        .with_uint_option(OptionNumber::CONTENT_FORMAT, 50);
    assert!(s.send(&request).is_empty(), "no error reply");
    let r = s.request();
    assert_eq!(r.message.code, Code::GET);
}

#[test]
fn empty_con_ping_is_reset() {
    let mut s = script();
    assert_rst(&s.raw(&header(CON, 0, 0x00)));
    no_app_event(&mut s);
    assert_eq!(s.ep.stats().pings, 1);
}

#[test]
fn rst_or_ack_for_unknown_message_id_is_ignored() {
    let mut s = script();
    assert!(s.raw(&header(0x60, 0, 0x00)).is_empty()); // ACK
    assert!(s.raw(&header(0x70, 0, 0x00)).is_empty()); // RST
    no_app_event(&mut s);
}

#[test]
fn unknown_response_code_is_ignored() {
    let mut s = script();
    for code in [0x4Fu8, 0x47, 0x9F, 0xBF] {
        assert!(s.raw(&header(CON, 0, code)).is_empty());
        assert!(s.raw(&header(0x60, 0, code)).is_empty());
    }
    no_app_event(&mut s);
}

#[test]
fn after_malformed_input_requests_are_still_served() {
    let mut s = script();
    s.raw(&header(CON, 9, 0x01));
    s.raw(&header(CON, 0, 0x1F));
    let ok = Message::new(MessageType::Con, Code::GET, 0x4321).with_uri_path("ok");
    assert!(s.send(&ok).is_empty());
    assert!(matches!(s.events().as_slice(), [Event::Request(_)]));
}
