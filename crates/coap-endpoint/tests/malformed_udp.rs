#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! Every datagram of the spec's malformed-input table, sent over a real UDP
//! socket to the `echo_server` example: exactly the reaction in the table,
//! and the server keeps serving.

mod echo;

use std::net::UdpSocket;
use std::time::Duration;

use coap_endpoint::coap_codec::{Code, Message, MessageType};
use echo::EchoServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Nothing,
    Rst,
    Code(Code),
}

fn header(type_bits: u8, tkl: u8, code: u8, mid: u16) -> Vec<u8> {
    let [hi, lo] = mid.to_be_bytes();
    vec![0x40 | (type_bits << 4) | tkl, code, hi, lo]
}

fn with(mut bytes: Vec<u8>, rest: &[u8]) -> Vec<u8> {
    bytes.extend_from_slice(rest);
    bytes
}

#[test]
fn malformed_datagrams_get_the_table_reaction_over_udp() {
    let server = EchoServer::start(&[]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server.udp).unwrap();
    let (con, non) = (0u8, 1u8);
    let mut mid = 0x2000u16;
    let mut next = || {
        mid += 1;
        mid
    };
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "version 2",
            {
                let mut b = header(con, 0, 0x01, next());
                b[0] = 0x80;
                b
            },
            Expect::Nothing,
        ),
        (
            "TKL 9 CON",
            with(header(con, 9, 0x01, next()), &[0; 9]),
            Expect::Rst,
        ),
        (
            "TKL 15 NON",
            with(header(non, 15, 0x01, next()), &[0; 15]),
            Expect::Nothing,
        ),
        ("class 1 CON", header(con, 0, 0x21, next()), Expect::Rst),
        ("class 6 NON", header(non, 0, 0xC1, next()), Expect::Nothing),
        ("class 7 CON", header(con, 0, 0xE1, next()), Expect::Rst),
        (
            "0.00 with token",
            with(header(con, 1, 0x00, next()), &[0xAB]),
            Expect::Rst,
        ),
        (
            "0.00 NON with payload",
            with(header(non, 0, 0x00, next()), &[0xFF, 1]),
            Expect::Rst,
        ),
        (
            "marker, no payload CON",
            with(header(con, 0, 0x01, next()), &[0xFF]),
            Expect::Rst,
        ),
        (
            "marker, no payload NON",
            with(header(non, 0, 0x01, next()), &[0xFF]),
            Expect::Nothing,
        ),
        (
            "delta nibble 15",
            with(header(con, 0, 0x01, next()), &[0xF1, 0]),
            Expect::Rst,
        ),
        (
            "length nibble 15 NON",
            with(header(non, 0, 0x01, next()), &[0x1F, 0]),
            Expect::Nothing,
        ),
        (
            "truncated token",
            with(header(con, 4, 0x01, next()), &[1, 2]),
            Expect::Rst,
        ),
        (
            "truncated option",
            with(header(con, 0, 0x01, next()), &[0xB3, b'a']),
            Expect::Rst,
        ),
        (
            "truncated option NON",
            with(header(non, 0, 0x01, next()), &[0xB3, b'a']),
            Expect::Nothing,
        ),
        (
            "method 0.31",
            header(con, 0, 0x1F, next()),
            Expect::Code(Code::METHOD_NOT_ALLOWED),
        ),
        (
            "critical option 65001",
            with(header(con, 0, 0x01, next()), &[0xE1, 0xFD, 0xDC, b'x']),
            Expect::Code(Code::BAD_OPTION),
        ),
        (
            "two Uri-Host",
            with(header(con, 0, 0x01, next()), &[0x31, b'a', 0x01, b'b']),
            Expect::Code(Code::BAD_OPTION),
        ),
        (
            "If-None-Match with value",
            with(header(con, 0, 0x03, next()), &[0x51, 0]),
            Expect::Code(Code::BAD_OPTION),
        ),
        (
            "Block2 of 4 bytes",
            with(header(con, 0, 0x01, next()), &[0xD4, 10, 0, 0, 0, 0x16]),
            Expect::Code(Code::BAD_OPTION),
        ),
        (
            "Block1 SZX 7",
            with(header(con, 0, 0x02, next()), &[0xD1, 14, 0x07]),
            Expect::Code(Code::BAD_REQUEST),
        ),
        ("empty CON ping", header(con, 0, 0x00, next()), Expect::Rst),
        (
            "ACK unknown id",
            header(2, 0, 0x00, next()),
            Expect::Nothing,
        ),
        (
            "RST unknown id",
            header(3, 0, 0x00, next()),
            Expect::Nothing,
        ),
        (
            "unknown response 2.15",
            header(con, 0, 0x4F, next()),
            Expect::Nothing,
        ),
    ];
    let mut buf = [0u8; 2048];
    for (name, datagram, expect) in cases {
        let sent_mid = u16::from_be_bytes([datagram[2], datagram[3]]);
        socket.send(&datagram).unwrap();
        let wait = if expect == Expect::Nothing { 250 } else { 2000 };
        socket
            .set_read_timeout(Some(Duration::from_millis(wait)))
            .unwrap();
        let got = socket
            .recv(&mut buf)
            .ok()
            .map(|n| Message::from_bytes(buf[..n].to_vec().into()).unwrap());
        match (expect, got) {
            (Expect::Nothing, None) => {}
            (Expect::Rst, Some(m)) => {
                assert_eq!(m.mtype, MessageType::Rst, "{name}");
                assert_eq!(
                    m.message_id, sent_mid,
                    "{name}: RST with the same message id"
                );
            }
            (Expect::Code(code), Some(m)) => {
                assert_eq!(m.code, code, "{name}");
                assert_eq!(m.mtype, MessageType::Ack, "{name}: piggybacked");
                assert_eq!(m.message_id, sent_mid, "{name}");
                if code == Code::BAD_OPTION {
                    assert!(!m.payload.is_empty(), "{name}: diagnostic payload");
                }
            }
            (expect, got) => panic!("{name}: expected {expect:?}, got {got:?}"),
        }
    }
    // Still serving.
    let ok = Message::new(MessageType::Con, Code::POST, 0x7777)
        .with_token(&b"ok"[..])
        .with_uri_path("echo")
        .with_payload(&b"alive"[..]);
    socket.send(&ok.to_bytes().unwrap()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let n = socket.recv(&mut buf).unwrap();
    let reply = Message::from_bytes(buf[..n].to_vec().into()).unwrap();
    assert_eq!(reply.code, Code::CHANGED);
    assert_eq!(&reply.payload[..], b"alive");
}
