//! `coap-codec`: bytes ⇄ CoAP messages (RFC 7252 §3, RFC 7641, RFC 7959,
//! RFC 8974, RFC 8323 §3).
//!
//! **For:** turning a UDP datagram (or an RFC 8323 stream frame) into a
//! message and back, and the registries and typed option values needed to
//! interpret one: [`Code`], [`OptionNumber`], [`ContentFormat`], [`Block`],
//! uint and Observe values, Uri-Path/Uri-Query helpers, and the request
//! checks that decide between 4.02 / 4.00 / 4.05.
//!
//! **Not for:** anything with state, time or I/O — deduplication,
//! retransmission, observe relations and block-wise transfers live in
//! `coap-endpoint`, which decides the wire reaction to each error here.
//!
//! ```text
//!  datagram ──MessageRef::parse──▶ MessageRef<'a>  (zero-copy, hot path)
//!      │                              │  validate_request → 4.02/4.00/4.05
//!      │                              └─ to_message ─┐
//!      └──────Message::from_bytes (Bytes slices)─────▶ Message ──encode──▶ BufMut
//!  stream ──TcpFrameRef::parse──▶ TcpFrameRef<'a>      Message ──encode_tcp──▶ BufMut
//! ```
//!
//! Parsing is written with `nom` complete-input parsers: a short input is a
//! [`ParseError::Truncated`] with the byte offset, never "incomplete".
//! Each malformed-input case has its own [`ParseError`] variant; when a
//! parse fails after the 4-byte header, [`peek_header`] still yields the
//! type and message id so a CON can be answered with an RST.

mod accessors;
mod code;
mod content_format;
mod encode;
mod error;
mod header;
mod message;
mod message_ref;
mod option_number;
pub mod option_value;
mod options;
mod settings;
mod tcp;
pub mod uri;
mod validate;
mod wire;

pub use code::Code;
pub use content_format::ContentFormat;
pub use encode::MAX_OPTION_VALUE_LEN;
pub use error::{EncodeError, MessagePart, ParseError};
pub use header::{COAP_VERSION, Header, MessageType, peek_header};
pub use message::{Message, MessageOption};
pub use message_ref::MessageRef;
pub use option_number::{OptionDefinition, OptionFormat, OptionNumber};
pub use option_value::{Block, OptionValueError, UintBytes, decode_uint, encode_uint};
pub use options::{OptionRef, OptionValues, Options};
pub use settings::CodecSettings;
pub use tcp::{DEFAULT_MAX_FRAME_BODY, TcpFrameRef, tcp_frame_len};
pub use uri::{QueryParam, UriError};
pub use validate::{RequestError, recognised_by_default, validate_request, validate_request_with};
