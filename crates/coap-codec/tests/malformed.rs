#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! One test per row of the malformed-input table in
//! `/spec/coap-core.md` ("Malformed input — what the message layer
//! answers"): each row yields a distinct typed error (or, for rows the
//! codec accepts, the facts the message layer needs to decide).

use coap_codec::{
    Code, CodecSettings, MessagePart, MessageRef, MessageType, OptionNumber, ParseError,
    RequestError, peek_header, validate_request, validate_request_with,
};

/// A CON with MID 0x1234 and the given TKL nibble, code, and trailing bytes.
fn con(tkl: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![0x40 | tkl, code, 0x12, 0x34];
    v.extend_from_slice(rest);
    v
}

fn parse_err(bytes: &[u8]) -> ParseError {
    MessageRef::parse(bytes).expect_err("must be rejected")
}

/// After a post-header error the message layer still learns type and MID.
fn assert_header_known(bytes: &[u8]) {
    let h = peek_header(bytes).expect("header readable");
    assert_eq!(h.message_id, 0x1234);
}

#[test]
fn row_version_not_1_is_dropped() {
    for version in [0u8, 2, 3] {
        let bytes = [version << 6, 0x01, 0x12, 0x34];
        assert_eq!(
            parse_err(&bytes),
            ParseError::UnsupportedVersion { version }
        );
        assert_eq!(peek_header(&bytes), None, "nothing to answer: drop");
    }
}

#[test]
fn row_tkl_9_to_15_without_rfc_8974() {
    for tkl in 9..=15u8 {
        let bytes = con(tkl, 0x01, &[0u8; 16]);
        assert_eq!(parse_err(&bytes), ParseError::InvalidTokenLength { tkl });
        let h = peek_header(&bytes).unwrap();
        assert_eq!((h.mtype, h.message_id), (MessageType::Con, 0x1234));
    }
    // With RFC 8974 enabled, 9–14 have a meaning, 15 stays reserved.
    let ext = CodecSettings::DEFAULT.with_extended_tokens(300);
    assert_eq!(
        MessageRef::parse_with(&con(9, 0x01, &[0u8; 9]), &ext)
            .unwrap()
            .token()
            .len(),
        9
    );
    assert_eq!(
        MessageRef::parse_with(&con(15, 0x01, &[0u8; 16]), &ext),
        Err(ParseError::InvalidTokenLength { tkl: 15 })
    );
    // TKL 14 announcing more than the configured limit.
    assert_eq!(
        MessageRef::parse_with(&con(14, 0x01, &[0x01, 0x00]), &ext),
        Err(ParseError::TokenTooLong { len: 525, max: 300 })
    );
}

#[test]
fn row_reserved_code_class() {
    for class in [1u8, 3, 6, 7] {
        let code = Code::new(class, 1);
        let bytes = con(0, code.to_u8(), &[]);
        assert_eq!(parse_err(&bytes), ParseError::ReservedCodeClass { code });
        assert_header_known(&bytes);
    }
}

#[test]
fn row_empty_code_with_token_options_or_payload() {
    let with_token = con(1, 0x00, &[0xaa]);
    let with_option = con(0, 0x00, &[0xb1, b'a']);
    let with_payload = con(0, 0x00, &[0xff, 1]);
    for bytes in [with_token, with_option, with_payload] {
        assert_eq!(
            parse_err(&bytes),
            ParseError::NonEmptyEmptyMessage { offset: 4 }
        );
        assert_header_known(&bytes);
    }
    // TKL set but nothing after the header is still a format error.
    assert_eq!(
        parse_err(&con(2, 0x00, &[])),
        ParseError::NonEmptyEmptyMessage { offset: 4 }
    );
}

#[test]
fn row_payload_marker_followed_by_nothing() {
    let bytes = con(1, 0x02, &[0x07, 0xb1, b'a', 0xff]);
    assert_eq!(parse_err(&bytes), ParseError::EmptyPayload { offset: 7 });
    assert_header_known(&bytes);
    assert_eq!(
        parse_err(&con(0, 0x45, &[0xff])),
        ParseError::EmptyPayload { offset: 4 }
    );
}

#[test]
fn row_option_nibble_15_that_is_not_the_marker() {
    // Delta nibble 15 with length nibble != 15.
    let bytes = con(0, 0x01, &[0xb1, b'a', 0xf1, 0x00]);
    assert_eq!(
        parse_err(&bytes),
        ParseError::ReservedOptionDelta { offset: 6 }
    );
    assert_header_known(&bytes);
    // Length nibble 15.
    let bytes = con(0, 0x01, &[0x1f, 0x00]);
    assert_eq!(
        parse_err(&bytes),
        ParseError::ReservedOptionLength { offset: 4 }
    );
}

#[test]
fn row_truncated_token_or_option() {
    // Token: TKL 4, only 2 bytes present.
    let bytes = con(4, 0x01, &[1, 2]);
    assert_eq!(
        parse_err(&bytes),
        ParseError::Truncated {
            part: MessagePart::Token,
            offset: 4
        }
    );
    assert_header_known(&bytes);
    // Option value: Uri-Path of length 5 with 2 bytes.
    assert_eq!(
        parse_err(&con(0, 0x01, &[0xb5, b'a', b'b'])),
        ParseError::Truncated {
            part: MessagePart::OptionValue,
            offset: 5
        }
    );
    // Extended delta byte missing.
    assert_eq!(
        parse_err(&con(0, 0x01, &[0xd0])),
        ParseError::Truncated {
            part: MessagePart::OptionHeader,
            offset: 4
        }
    );
    // Extended length (two bytes) cut after one.
    assert_eq!(
        parse_err(&con(0, 0x01, &[0x1e, 0x00])),
        ParseError::Truncated {
            part: MessagePart::OptionHeader,
            offset: 4
        }
    );
    // Header itself: nothing to answer.
    assert_eq!(
        parse_err(&[0x40, 0x01, 0x12]),
        ParseError::Truncated {
            part: MessagePart::Header,
            offset: 0
        }
    );
    assert_eq!(peek_header(&[0x40, 0x01, 0x12]), None);
    assert_eq!(
        parse_err(&con(0, 0x01, &[0xe0, 0xff, 0xff])),
        ParseError::OptionNumberOverflow { offset: 4 }
    );
    // Option number beyond 65535: 65535 (= 269 + 0xfef2), then delta 1.
    let max = con(0, 0x01, &[0xe0, 0xfe, 0xf2]);
    assert_eq!(
        MessageRef::parse(&max)
            .unwrap()
            .options()
            .next()
            .unwrap()
            .number,
        OptionNumber(65535)
    );
    assert_eq!(
        parse_err(&con(0, 0x01, &[0xe0, 0xfe, 0xf2, 0x10])),
        ParseError::OptionNumberOverflow { offset: 7 }
    );
}

#[test]
fn row_unknown_request_method_is_405() {
    let bytes = con(0, Code::new(0, 31).to_u8(), &[]);
    let msg = MessageRef::parse(&bytes).expect("well-formed");
    let err = validate_request(&msg).unwrap_err();
    assert_eq!(
        err,
        RequestError::UnknownMethod {
            code: Code::new(0, 31)
        }
    );
    assert_eq!(err.response_code(), Code::METHOD_NOT_ALLOWED);
}

#[test]
fn row_unrecognised_critical_option_is_402_naming_it() {
    // Option 2049 is critical (odd) and unknown.
    let bytes = con(0, 0x01, &[0xe1, 0x06, 0xf4, 0x00]);
    let msg = MessageRef::parse(&bytes).unwrap();
    assert_eq!(msg.options().next().unwrap().number, OptionNumber(2049));
    let err = validate_request(&msg).unwrap_err();
    assert_eq!(
        err,
        RequestError::UnrecognizedCriticalOption {
            number: OptionNumber(2049)
        }
    );
    assert_eq!(err.response_code(), Code::BAD_OPTION);
    assert_eq!(err.option(), Some(OptionNumber(2049)));
    assert!(err.to_string().contains("2049"), "{err}");
    // OSCORE is known but not supported by default; a caller may recognise it.
    let oscore = con(0, 0x01, &[0x90]);
    let msg = MessageRef::parse(&oscore).unwrap();
    assert_eq!(
        validate_request(&msg),
        Err(RequestError::UnrecognizedCriticalOption {
            number: OptionNumber::OSCORE
        })
    );
    assert_eq!(validate_request_with(&msg, |_| true), Ok(()));
}

#[test]
fn row_repeated_non_repeatable_critical_option_is_402() {
    let bytes = con(0, 0x01, &[0x31, b'a', 0x01, b'b']); // Uri-Host twice
    let err = validate_request(&MessageRef::parse(&bytes).unwrap()).unwrap_err();
    assert_eq!(
        err,
        RequestError::RepeatedCriticalOption {
            number: OptionNumber::URI_HOST
        }
    );
    assert_eq!(err.response_code(), Code::BAD_OPTION);
    assert!(err.to_string().contains("Uri-Host"));
    // Uri-Path repeated is fine.
    let ok = con(0, 0x01, &[0xb1, b'a', 0x01, b'b']);
    assert_eq!(validate_request(&MessageRef::parse(&ok).unwrap()), Ok(()));
}

#[test]
fn row_if_none_match_with_value_is_402() {
    let bytes = con(0, 0x03, &[0x51, 0x00]);
    let err = validate_request(&MessageRef::parse(&bytes).unwrap()).unwrap_err();
    assert_eq!(err, RequestError::IfNoneMatchWithValue { len: 1 });
    assert_eq!(err.response_code(), Code::BAD_OPTION);
    assert_eq!(err.option(), Some(OptionNumber::IF_NONE_MATCH));
    let ok = con(0, 0x03, &[0x50]);
    let msg = MessageRef::parse(&ok).unwrap();
    assert!(msg.if_none_match());
    assert_eq!(validate_request(&msg), Ok(()));
}

#[test]
fn row_block_value_longer_than_3_bytes_is_402() {
    // Block2 (23): delta 23 = 13 + 10, length 4.
    let bytes = con(0, 0x01, &[0xd4, 10, 0, 0, 0, 0x16]);
    let msg = MessageRef::parse(&bytes).unwrap();
    let err = validate_request(&msg).unwrap_err();
    assert_eq!(
        err,
        RequestError::BlockValueTooLong {
            number: OptionNumber::BLOCK2,
            len: 4
        }
    );
    assert_eq!(err.response_code(), Code::BAD_OPTION);
    assert_eq!(msg.block2(), None);
    // Block1 (27) too.
    let bytes = con(0, 0x02, &[0xd4, 14, 0, 0, 0, 0x16]);
    let err = validate_request(&MessageRef::parse(&bytes).unwrap()).unwrap_err();
    assert_eq!(
        err,
        RequestError::BlockValueTooLong {
            number: OptionNumber::BLOCK1,
            len: 4
        }
    );
}

#[test]
fn row_block_szx_7_in_request_is_400() {
    let bytes = con(0, 0x02, &[0xd1, 14, 0x0f]); // Block1 NUM 0, M 1, SZX 7
    let err = validate_request(&MessageRef::parse(&bytes).unwrap()).unwrap_err();
    assert_eq!(
        err,
        RequestError::ReservedBlockSize {
            number: OptionNumber::BLOCK1
        }
    );
    assert_eq!(err.response_code(), Code::BAD_REQUEST);
}

#[test]
fn row_unknown_or_repeated_elective_option_is_ignored() {
    // Option 2048 (elective, unknown), Content-Format twice (elective, not repeatable).
    let bytes = con(0, 0x02, &[0xc1, 50, 0x01, 60, 0xe0, 0x06, 0xe7, 0xff, b'x']);
    let msg = MessageRef::parse(&bytes).unwrap();
    assert_eq!(validate_request(&msg), Ok(()));
    assert_eq!(
        msg.content_format(),
        Some(coap_codec::ContentFormat::JSON),
        "first one wins"
    );
    assert_eq!(msg.option(OptionNumber(2048)), Some(&[][..]));
    // A malformed elective (5-byte Content-Format) is ignored, not an error.
    let bad = con(0, 0x02, &[0xc5, 1, 2, 3, 4, 5]);
    let msg = MessageRef::parse(&bad).unwrap();
    assert_eq!(validate_request(&msg), Ok(()));
    assert_eq!(msg.content_format(), None);
}

#[test]
fn row_empty_con_is_a_ping() {
    let msg = MessageRef::parse(&[0x40, 0x00, 0x12, 0x34]).unwrap();
    assert!(msg.is_ping());
    assert_eq!(msg.message_id(), 0x1234);
    assert_eq!(
        validate_request(&msg),
        Err(RequestError::NotARequest { code: Code::EMPTY })
    );
}

#[test]
fn row_rst_or_ack_parse_for_the_layer_to_match() {
    for first in [0x60u8, 0x70] {
        let bytes = [first, 0x00, 0xab, 0xcd];
        let msg = MessageRef::parse(&bytes).unwrap();
        assert!(msg.code().is_empty());
        assert_eq!(msg.message_id(), 0xabcd);
        assert!(!msg.is_ping());
    }
}

#[test]
fn row_unknown_response_code_parses_for_the_layer_to_ignore() {
    let code = Code::new(2, 17);
    let bytes = con(0, code.to_u8(), &[]);
    let msg = MessageRef::parse(&bytes).unwrap();
    assert!(msg.code().is_response());
    assert_eq!(msg.code().name(), None);
}
