//! The owned message, built on `bytes::Bytes`, with a builder-style API.

use bytes::{Bytes, BytesMut};

use crate::accessors::typed_option_accessors;
use crate::code::Code;
use crate::content_format::ContentFormat;
use crate::error::ParseError;
use crate::header::MessageType;
use crate::message_ref::MessageRef;
use crate::option_number::OptionNumber;
use crate::option_value::{Block, encode_uint, observe};
use crate::options::OptionRef;
use crate::settings::CodecSettings;
use crate::uri::{QueryParam, find_query_param};

/// One option of an owned [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageOption {
    /// The option number.
    pub number: OptionNumber,
    /// The raw value.
    pub value: Bytes,
}

/// An owned CoAP message for building, keeping and encoding.
///
/// Options are kept sorted by number at all times; options with the same
/// number keep the order in which they were added (so repeated options such
/// as Uri-Path stay in sequence). Encode with [`Message::encode`].
///
/// ```
/// use coap_codec::{Code, ContentFormat, Message, MessageType};
/// let msg = Message::new(MessageType::Con, Code::POST, 0x1234)
///     .with_token(&b"\x01\x02"[..])
///     .with_uri_path("ps/sensors/t1")
///     .with_content_format(ContentFormat::JSON)
///     .with_payload(&b"{\"t\":21}"[..]);
/// let wire = msg.to_bytes().unwrap();
/// assert_eq!(Message::from_bytes(wire).unwrap(), msg);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// Message type.
    pub mtype: MessageType,
    /// Message code.
    pub code: Code,
    /// Message id.
    pub message_id: u16,
    /// Token.
    pub token: Bytes,
    options: Vec<MessageOption>,
    /// Payload (empty for none).
    pub payload: Bytes,
}

impl Message {
    /// A message with no token, options or payload.
    pub fn new(mtype: MessageType, code: Code, message_id: u16) -> Message {
        Message {
            mtype,
            code,
            message_id,
            token: Bytes::new(),
            options: Vec::new(),
            payload: Bytes::new(),
        }
    }

    /// An empty ACK (0.00) for `message_id`.
    pub fn empty_ack(message_id: u16) -> Message {
        Message::new(MessageType::Ack, Code::EMPTY, message_id)
    }

    /// An RST (0.00) for `message_id`.
    pub fn reset(message_id: u16) -> Message {
        Message::new(MessageType::Rst, Code::EMPTY, message_id)
    }

    /// Parses `datagram` with the default settings, keeping token, option
    /// values and payload as zero-copy slices of it.
    pub fn from_bytes(datagram: Bytes) -> Result<Message, ParseError> {
        Self::from_bytes_with(datagram, &CodecSettings::DEFAULT)
    }

    /// Like [`Message::from_bytes`] with explicit settings.
    pub fn from_bytes_with(
        datagram: Bytes,
        settings: &CodecSettings,
    ) -> Result<Message, ParseError> {
        let view = MessageRef::parse_with(&datagram, settings)?;
        Ok(Message::from_view(&view, |s| datagram.slice_ref(s)))
    }

    /// Builds a message from `view`, asking `bytes` for the token, then each
    /// option's value in order, then the payload (`MessageRef::to_message`
    /// relies on this order).
    pub(crate) fn from_view(
        view: &MessageRef<'_>,
        mut bytes: impl FnMut(&[u8]) -> Bytes,
    ) -> Message {
        Message {
            mtype: view.mtype(),
            code: view.code(),
            message_id: view.message_id(),
            token: bytes(view.token()),
            options: view
                .options()
                .map(|o| MessageOption {
                    number: o.number,
                    value: bytes(o.value),
                })
                .collect(),
            payload: bytes(view.payload()),
        }
    }

    // ---- builder ----

    /// Sets the token.
    pub fn with_token(mut self, token: impl Into<Bytes>) -> Message {
        self.token = token.into();
        self
    }

    /// Adds an option (after any existing ones with the same number).
    pub fn with_option(mut self, number: OptionNumber, value: impl Into<Bytes>) -> Message {
        self.add_option(number, value);
        self
    }

    /// Adds a uint option in its shortest encoding.
    pub fn with_uint_option(self, number: OptionNumber, value: u32) -> Message {
        let v = encode_uint(value);
        self.with_option(number, Bytes::copy_from_slice(&v))
    }

    /// Adds one Uri-Path option per `/`-separated segment of `path`, as is
    /// (no percent-decoding; see [`crate::uri::split_path`] for that). One
    /// leading `/` is ignored; `""` and `"/"` add nothing.
    pub fn with_uri_path(mut self, path: &str) -> Message {
        let path = path.strip_prefix('/').unwrap_or(path);
        if !path.is_empty() {
            for seg in path.split('/') {
                self.add_option(
                    OptionNumber::URI_PATH,
                    Bytes::copy_from_slice(seg.as_bytes()),
                );
            }
        }
        self
    }

    /// Adds one Uri-Query option, e.g. `"c=client1"`.
    pub fn with_uri_query(self, entry: &str) -> Message {
        self.with_option(
            OptionNumber::URI_QUERY,
            Bytes::copy_from_slice(entry.as_bytes()),
        )
    }

    /// Sets Content-Format.
    pub fn with_content_format(mut self, format: ContentFormat) -> Message {
        self.set_uint_option(OptionNumber::CONTENT_FORMAT, u32::from(format.0));
        self
    }

    /// Sets Accept.
    pub fn with_accept(mut self, format: ContentFormat) -> Message {
        self.set_uint_option(OptionNumber::ACCEPT, u32::from(format.0));
        self
    }

    /// Sets Observe (reduced modulo 2^24).
    pub fn with_observe(mut self, value: u32) -> Message {
        self.set_option(
            OptionNumber::OBSERVE,
            Bytes::copy_from_slice(&observe::encode(value)),
        );
        self
    }

    /// Sets Block1.
    pub fn with_block1(mut self, block: Block) -> Message {
        self.set_option(
            OptionNumber::BLOCK1,
            Bytes::copy_from_slice(&block.encode()),
        );
        self
    }

    /// Sets Block2.
    pub fn with_block2(mut self, block: Block) -> Message {
        self.set_option(
            OptionNumber::BLOCK2,
            Bytes::copy_from_slice(&block.encode()),
        );
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Message {
        self.payload = payload.into();
        self
    }

    // ---- mutation ----

    /// Adds an option after any existing ones with the same number.
    pub fn add_option(&mut self, number: OptionNumber, value: impl Into<Bytes>) {
        let at = self.options.partition_point(|o| o.number <= number);
        self.options.insert(
            at,
            MessageOption {
                number,
                value: value.into(),
            },
        );
    }

    /// Replaces all occurrences of `number` with one option.
    pub fn set_option(&mut self, number: OptionNumber, value: impl Into<Bytes>) {
        self.remove_option(number);
        self.add_option(number, value);
    }

    /// Replaces all occurrences of `number` with one uint option.
    pub fn set_uint_option(&mut self, number: OptionNumber, value: u32) {
        self.set_option(number, Bytes::copy_from_slice(&encode_uint(value)));
    }

    /// Removes all occurrences of `number`; returns how many were removed.
    pub fn remove_option(&mut self, number: OptionNumber) -> usize {
        let before = self.options.len();
        self.options.retain(|o| o.number != number);
        before - self.options.len()
    }

    /// Removes all options.
    pub fn clear_options(&mut self) {
        self.options.clear();
    }

    // ---- reading ----

    /// Message type.
    pub fn mtype(&self) -> MessageType {
        self.mtype
    }

    /// Message code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// All options, sorted by number.
    pub fn options(&self) -> impl ExactSizeIterator<Item = OptionRef<'_>> + '_ {
        self.options.iter().map(|o| OptionRef {
            number: o.number,
            value: &o.value,
        })
    }

    /// The options as stored (sorted by number).
    pub fn option_list(&self) -> &[MessageOption] {
        &self.options
    }

    /// Number of options.
    pub fn option_count(&self) -> usize {
        self.options.len()
    }

    /// The first value of option `number`, if present.
    pub fn option(&self, number: OptionNumber) -> Option<&[u8]> {
        self.options_of(number).next()
    }

    /// All values of option `number`, in order.
    pub fn options_of(&self, number: OptionNumber) -> impl Iterator<Item = &[u8]> + '_ {
        let start = self.options.partition_point(|o| o.number < number);
        self.options
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(move |o| o.number == number)
            .map(|o| &o.value[..])
    }

    /// The Uri-Path segments, in order.
    pub fn uri_path(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.options_of(OptionNumber::URI_PATH)
    }

    /// The Uri-Query entries, in order.
    pub fn uri_query(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.options_of(OptionNumber::URI_QUERY)
    }

    /// The first Uri-Query entry whose key equals `key`.
    pub fn query_param(&self, key: &str) -> Option<QueryParam<'_>> {
        find_query_param(self.uri_query(), key)
    }

    typed_option_accessors!();
}

impl MessageRef<'_> {
    /// Copies the message into an owned [`Message`]. The token, the option
    /// values and the payload are copied into one buffer that the parts
    /// share: two allocations (the buffer and its shared header) instead
    /// of one per part.
    pub fn to_message(&self) -> Message {
        let parts = [self.token(), self.raw_options(), self.payload()];
        let bound: usize = parts.iter().map(|p| p.len()).sum();
        if bound == 0 {
            return Message::from_view(self, |_| Bytes::new());
        }
        // Same order as `from_view` asks for the parts: token, each
        // option's value, payload.
        let mut buf = BytesMut::with_capacity(bound);
        buf.extend_from_slice(self.token());
        for option in self.options() {
            buf.extend_from_slice(option.value);
        }
        buf.extend_from_slice(self.payload());
        let whole = buf.freeze();
        let mut at = 0;
        Message::from_view(self, |part| {
            let end = at + part.len();
            let shared = whole.slice(at..end);
            at = end;
            shared
        })
    }
}

impl From<MessageRef<'_>> for Message {
    fn from(view: MessageRef<'_>) -> Message {
        view.to_message()
    }
}
