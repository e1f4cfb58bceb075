//! The few bytes of DTLS 1.2 this crate reads and writes itself, before any
//! OpenSSL object exists: the record header (RFC 6347 §4.1), the handshake
//! header (§4.2.2), the ClientHello (§4.2.1 / RFC 5246 §7.4.1.2) and the
//! HelloVerifyRequest (§4.2.1) of the stateless cookie exchange.
//!
//! Parsers are small `nom` functions over borrowed bytes; every length is
//! checked against the bytes that are there before anything is taken, and
//! trailing bytes inside a length-delimited structure are rejected.

use nom::IResult;
use nom::Parser;
use nom::bytes::complete::take;
use nom::number::complete::{be_u8, be_u16, be_u24, be_u32};

/// Content type `change_cipher_spec` (RFC 5246 §6.2.1).
pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
/// Content type `alert`.
pub const CONTENT_ALERT: u8 = 21;
/// Content type `handshake`.
pub const CONTENT_HANDSHAKE: u8 = 22;
/// Content type `application_data`.
pub const CONTENT_APPLICATION_DATA: u8 = 23;
/// Content type `heartbeat` (RFC 6520).
pub const CONTENT_HEARTBEAT: u8 = 24;
/// Content type `tls12_cid` (RFC 9146; OpenSSL 3.0 does not speak it).
pub const CONTENT_TLS12_CID: u8 = 25;

/// Handshake type `client_hello`.
pub const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Handshake type `hello_verify_request` (RFC 6347 §4.3.2).
pub const HANDSHAKE_HELLO_VERIFY_REQUEST: u8 = 3;

/// `ProtocolVersion` of DTLS 1.0 on the wire ({254, 255}).
pub const DTLS_1_0: u16 = 0xfeff;
/// `ProtocolVersion` of DTLS 1.2 on the wire ({254, 253}).
pub const DTLS_1_2: u16 = 0xfefd;

/// Length of a DTLS record header.
pub const RECORD_HEADER_LEN: usize = 13;
/// Length of a DTLS handshake message header.
pub const HANDSHAKE_HEADER_LEN: usize = 12;
/// Largest cookie a DTLS 1.2 ClientHello may carry (`opaque cookie<0..2^8-1>`).
pub const MAX_COOKIE_LEN: usize = 255;

/// Why bytes are not the DTLS structure that was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The first byte is not a DTLS content type or the version is not DTLS
    /// (a plaintext CoAP datagram lands here).
    #[error("not a DTLS record")]
    NotDtls,
    /// A length field points past the end of the bytes, or bytes are left
    /// over inside a length-delimited structure.
    #[error("truncated or inconsistent DTLS structure")]
    Malformed,
    /// The first record is not an epoch-0 handshake record carrying a
    /// ClientHello.
    #[error("not a ClientHello")]
    NotClientHello,
    /// The ClientHello is split over several fragments; the stateless cookie
    /// check (like OpenSSL's `DTLSv1_listen`) only accepts it whole.
    #[error("fragmented ClientHello")]
    Fragmented,
}

/// A DTLS record header and its fragment (RFC 6347 §4.1):
///
/// ```text
/// struct {
///   ContentType type; ProtocolVersion version; uint16 epoch;
///   uint48 sequence_number; uint16 length; opaque fragment[length];
/// } DTLSPlaintext;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Content type (20..=25).
    pub content_type: u8,
    /// Record layer version (major byte 254).
    pub version: u16,
    /// Epoch: 0 until the first ChangeCipherSpec.
    pub epoch: u16,
    /// 48-bit record sequence number.
    pub sequence_number: u64,
    /// The record's payload (`length` bytes).
    pub fragment: &'a [u8],
}

/// A DTLS handshake message header and its fragment body (RFC 6347 §4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeHeader<'a> {
    /// Handshake message type.
    pub msg_type: u8,
    /// Length of the whole message body.
    pub length: u32,
    /// Handshake message sequence number.
    pub message_seq: u16,
    /// Offset of this fragment inside the body.
    pub fragment_offset: u32,
    /// Length of this fragment.
    pub fragment_length: u32,
    /// The fragment bytes.
    pub body: &'a [u8],
}

/// The fields of a ClientHello the cookie exchange needs (RFC 6347 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The record it arrived in.
    pub record_sequence_number: u64,
    /// The handshake message sequence number (0 before, 1 after a
    /// HelloVerifyRequest, usually).
    pub message_seq: u16,
    /// `client_version`.
    pub client_version: u16,
    /// The 32-byte `random`.
    pub random: &'a [u8; 32],
    /// `session_id<0..32>`.
    pub session_id: &'a [u8],
    /// `cookie<0..2^8-1>`; empty in a first ClientHello.
    pub cookie: &'a [u8],
    /// `cipher_suites<2..2^16-2>` as raw big-endian pairs.
    pub cipher_suites: &'a [u8],
}

impl<'a> ClientHello<'a> {
    /// Parses the first record of a datagram as an epoch-0 handshake record
    /// holding one whole ClientHello.
    pub fn parse_datagram(datagram: &'a [u8]) -> Result<Self, ParseError> {
        let (_, record) = parse_record(datagram)?;
        if record.content_type != CONTENT_HANDSHAKE || record.epoch != 0 {
            return Err(ParseError::NotClientHello);
        }
        let (_, handshake) = handshake_header(record.fragment).map_err(malformed)?;
        if handshake.msg_type != HANDSHAKE_CLIENT_HELLO {
            return Err(ParseError::NotClientHello);
        }
        if handshake.fragment_offset != 0 || handshake.fragment_length != handshake.length {
            return Err(ParseError::Fragmented);
        }
        let (rest, hello) = client_hello_body(handshake.body).map_err(malformed)?;
        // Extensions follow; they are opaque to the cookie check, but must
        // at least be length-consistent (RFC 5246 §7.4.1.2).
        if !rest.is_empty() {
            let (rest, _) = length_prefixed_u16(rest).map_err(malformed)?;
            if !rest.is_empty() {
                return Err(ParseError::Malformed);
            }
        }
        Ok(ClientHello {
            record_sequence_number: record.sequence_number,
            message_seq: handshake.message_seq,
            ..hello
        })
    }
}

/// Parses one DTLS record header and its fragment; returns the bytes after
/// the record (further records of the same datagram).
pub fn parse_record(input: &[u8]) -> Result<(&[u8], Record<'_>), ParseError> {
    let first = input.first().copied().ok_or(ParseError::NotDtls)?;
    if !(CONTENT_CHANGE_CIPHER_SPEC..=CONTENT_TLS12_CID).contains(&first) {
        return Err(ParseError::NotDtls);
    }
    let (rest, record) = record(input).map_err(malformed)?;
    if record.version >> 8 != 0xfe {
        return Err(ParseError::NotDtls);
    }
    Ok((rest, record))
}

/// RFC 6347 §4.1 `DTLSPlaintext`.
fn record(input: &[u8]) -> IResult<&[u8], Record<'_>> {
    let (input, (content_type, version, epoch, sequence_number, length)) =
        (be_u8, be_u16, be_u16, be_u48, be_u16).parse(input)?;
    let (input, fragment) = take(length)(input)?;
    Ok((
        input,
        Record {
            content_type,
            version,
            epoch,
            sequence_number,
            fragment,
        },
    ))
}

/// RFC 6347 §4.2.2 handshake header; the body is `fragment_length` bytes.
/// A 48-bit big-endian integer (record sequence numbers).
fn be_u48(input: &[u8]) -> IResult<&[u8], u64> {
    let (input, (high, low)) = (be_u16, be_u32).parse(input)?;
    Ok((input, (u64::from(high) << 32) | u64::from(low)))
}

fn handshake_header(input: &[u8]) -> IResult<&[u8], HandshakeHeader<'_>> {
    let (input, (msg_type, length, message_seq, fragment_offset, fragment_length)) =
        (be_u8, be_u24, be_u16, be_u24, be_u24).parse(input)?;
    let (input, body) = take(fragment_length)(input)?;
    Ok((
        input,
        HandshakeHeader {
            msg_type,
            length,
            message_seq,
            fragment_offset,
            fragment_length,
            body,
        },
    ))
}

/// RFC 6347 §4.2.1 ClientHello up to and including compression_methods.
fn client_hello_body(input: &[u8]) -> IResult<&[u8], ClientHello<'_>> {
    let (input, client_version) = be_u16(input)?;
    let (input, random) = take(32usize)(input)?;
    let (input, session_id) = length_prefixed_u8(input)?;
    let (input, cookie) = length_prefixed_u8(input)?;
    let (input, cipher_suites) = length_prefixed_u16(input)?;
    let (input, compression_methods) = length_prefixed_u8(input)?;
    let random: &[u8; 32] = random
        .try_into()
        .map_err(|_| nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Eof)))?;
    if session_id.len() > 32
        || cipher_suites.len() < 2
        || cipher_suites.len() % 2 != 0
        || compression_methods.is_empty()
    {
        return Err(nom::Err::Error(nom::error::Error::new(
            input,
            nom::error::ErrorKind::Verify,
        )));
    }
    Ok((
        input,
        ClientHello {
            record_sequence_number: 0,
            message_seq: 0,
            client_version,
            random,
            session_id,
            cookie,
            cipher_suites,
        },
    ))
}

fn length_prefixed_u8(input: &[u8]) -> IResult<&[u8], &[u8]> {
    let (input, len) = be_u8(input)?;
    take(len)(input)
}

fn length_prefixed_u16(input: &[u8]) -> IResult<&[u8], &[u8]> {
    let (input, len) = be_u16(input)?;
    take(len)(input)
}

fn malformed<E>(_: E) -> ParseError {
    ParseError::Malformed
}

/// Builds the datagram of a HelloVerifyRequest answering `hello`
/// (RFC 6347 §4.2.1):
///
/// - record version DTLS 1.0 ("DTLS 1.2 server implementations SHOULD use
///   DTLS version 1.0 regardless of the version of TLS that is expected to
///   be negotiated"), `server_version` likewise;
/// - record sequence number copied from the ClientHello ("the server MUST
///   use the record sequence number in the ClientHello as the record
///   sequence number in the HelloVerifyRequest");
/// - epoch 0, handshake `message_seq` 0 (the first message the server
///   transmits; OpenSSL's `DTLSv1_listen` does the same), one unfragmented
///   fragment.
///
/// Returns `None` if the cookie is longer than a DTLS 1.2 cookie may be.
pub fn hello_verify_request(record_sequence_number: u64, cookie: &[u8]) -> Option<Vec<u8>> {
    let cookie_len = u8::try_from(cookie.len()).ok()?;
    let body_len = 2 + 1 + cookie.len();
    let fragment_len = HANDSHAKE_HEADER_LEN + body_len;
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + fragment_len);
    out.push(CONTENT_HANDSHAKE);
    out.extend_from_slice(&DTLS_1_0.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&record_sequence_number.to_be_bytes()[2..]);
    out.extend_from_slice(&u16::try_from(fragment_len).ok()?.to_be_bytes());
    out.push(HANDSHAKE_HELLO_VERIFY_REQUEST);
    let body_len_bytes = u32::try_from(body_len).ok()?.to_be_bytes();
    out.extend_from_slice(&body_len_bytes[1..]); // length
    out.extend_from_slice(&0u16.to_be_bytes()); // message_seq
    out.extend_from_slice(&[0, 0, 0]); // fragment_offset
    out.extend_from_slice(&body_len_bytes[1..]); // fragment_length
    out.extend_from_slice(&DTLS_1_0.to_be_bytes());
    out.push(cookie_len);
    out.extend_from_slice(cookie);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as OpenSSL 3.0 sends it (record + handshake headers
    /// rebuilt by hand around a minimal body).
    pub(crate) fn client_hello(seq: u64, message_seq: u16, cookie: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&DTLS_1_2.to_be_bytes());
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 4, 0xc0, 0xa8, 0x00, 0xa8]); // suites
        body.extend_from_slice(&[1, 0]); // compression
        body.extend_from_slice(&[0, 4, 0xff, 0x01, 0, 0]); // extensions
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        let len = (body.len() as u32).to_be_bytes();
        hs.extend_from_slice(&len[1..]);
        hs.extend_from_slice(&message_seq.to_be_bytes());
        hs.extend_from_slice(&[0, 0, 0]);
        hs.extend_from_slice(&len[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE];
        rec.extend_from_slice(&DTLS_1_0.to_be_bytes());
        rec.extend_from_slice(&[0, 0]);
        rec.extend_from_slice(&seq.to_be_bytes()[2..]);
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn parses_a_client_hello_with_and_without_cookie() {
        let dg = client_hello(5, 0, &[]);
        let ch = ClientHello::parse_datagram(&dg).unwrap();
        assert_eq!(ch.record_sequence_number, 5);
        assert_eq!(ch.message_seq, 0);
        assert_eq!(ch.client_version, DTLS_1_2);
        assert_eq!(ch.random, &[7u8; 32]);
        assert!(ch.cookie.is_empty());
        assert_eq!(ch.cipher_suites, &[0xc0, 0xa8, 0x00, 0xa8]);

        let dg = client_hello(6, 1, &[9; 32]);
        let ch = ClientHello::parse_datagram(&dg).unwrap();
        assert_eq!(ch.cookie, &[9; 32]);
        assert_eq!(ch.message_seq, 1);
    }

    #[test]
    fn rejects_every_truncation() {
        let dg = client_hello(5, 0, &[1, 2, 3]);
        for n in 0..dg.len() {
            assert!(ClientHello::parse_datagram(&dg[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn plaintext_coap_is_not_dtls() {
        // CON GET, message id 0x1234, no token.
        let coap = [0x40, 0x01, 0x12, 0x34];
        assert_eq!(parse_record(&coap).unwrap_err(), ParseError::NotDtls);
        assert_eq!(
            ClientHello::parse_datagram(&coap).unwrap_err(),
            ParseError::NotDtls
        );
        assert_eq!(parse_record(&[]).unwrap_err(), ParseError::NotDtls);
    }

    #[test]
    fn application_data_is_not_a_client_hello() {
        let mut dg = client_hello(5, 0, &[]);
        dg[0] = CONTENT_APPLICATION_DATA;
        assert_eq!(
            ClientHello::parse_datagram(&dg).unwrap_err(),
            ParseError::NotClientHello
        );
        let mut dg = client_hello(5, 0, &[]);
        dg[4] = 1; // epoch 1
        assert_eq!(
            ClientHello::parse_datagram(&dg).unwrap_err(),
            ParseError::NotClientHello
        );
    }

    #[test]
    fn fragmented_client_hello_is_refused() {
        let mut dg = client_hello(5, 0, &[]);
        // fragment_offset = 1
        dg[RECORD_HEADER_LEN + 8] = 1;
        assert_eq!(
            ClientHello::parse_datagram(&dg).unwrap_err(),
            ParseError::Fragmented
        );
    }

    proptest::proptest! {
        #[test]
        fn hello_verify_request_round_trips(
            seq in 0u64..(1 << 48),
            cookie in proptest::collection::vec(proptest::num::u8::ANY, 0..=255),
        ) {
            let hvr = hello_verify_request(seq, &cookie).unwrap();
            let (rest, rec) = parse_record(&hvr).unwrap();
            proptest::prop_assert!(rest.is_empty());
            proptest::prop_assert_eq!(rec.sequence_number, seq);
            let (rest, hs) = handshake_header(rec.fragment).unwrap();
            proptest::prop_assert!(rest.is_empty());
            proptest::prop_assert_eq!(&hs.body[3..], cookie.as_slice());
        }

        #[test]
        fn client_hello_round_trips(
            seq in 0u64..(1 << 48),
            message_seq in 0u16..4,
            cookie in proptest::collection::vec(proptest::num::u8::ANY, 0..=255),
        ) {
            let dg = client_hello(seq, message_seq, &cookie);
            let ch = ClientHello::parse_datagram(&dg).unwrap();
            proptest::prop_assert_eq!(ch.record_sequence_number, seq);
            proptest::prop_assert_eq!(ch.message_seq, message_seq);
            proptest::prop_assert_eq!(ch.cookie, cookie.as_slice());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = ClientHello::parse_datagram(&bytes);
            let _ = parse_record(&bytes);
        }
    }

    #[test]
    fn hello_verify_request_layout() {
        let hvr = hello_verify_request(0x0102_0304_0506, &[0xaa; 32]).unwrap();
        let (rest, rec) = parse_record(&hvr).unwrap();
        assert!(rest.is_empty());
        assert_eq!(rec.content_type, CONTENT_HANDSHAKE);
        assert_eq!(rec.version, DTLS_1_0);
        assert_eq!(rec.epoch, 0);
        assert_eq!(rec.sequence_number, 0x0102_0304_0506);
        let (rest, hs) = handshake_header(rec.fragment).unwrap();
        assert!(rest.is_empty());
        assert_eq!(hs.msg_type, HANDSHAKE_HELLO_VERIFY_REQUEST);
        assert_eq!(hs.message_seq, 0);
        assert_eq!(hs.length, 35);
        assert_eq!(hs.fragment_length, 35);
        assert_eq!(&hs.body[..3], &[0xfe, 0xff, 32]);
        assert_eq!(&hs.body[3..], &[0xaa; 32]);
        assert!(hello_verify_request(0, &[0; 256]).is_none());
    }
}
