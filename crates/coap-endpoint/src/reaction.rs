//! The one place where a protocol fault becomes a wire reaction
//! (the malformed-input table of the spec; RFC 7252 §4.2, §4.3, §5.4.1,
//! RFC 7959 §2.2).

use coap_codec::{Code, Header, MessageType, ParseError, RequestError};

/// A fault found in an incoming datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The datagram did not parse; `header` is what [`coap_codec::peek_header`]
    /// could still read (type and message id), `None` if not even that.
    Parse {
        /// The parse error.
        error: ParseError,
        /// The intact 4-byte header, if any.
        header: Option<Header>,
    },
    /// A well-formed request the server must refuse.
    Request(RequestError),
    /// An empty CON: a CoAP ping (RFC 7252 §4.3).
    Ping {
        /// Its message id.
        message_id: u16,
    },
    /// A response with a code this endpoint does not know.
    UnknownResponseCode(Code),
}

/// What goes on the wire in answer to a [`Fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaction {
    /// Nothing; the datagram is dropped.
    Drop,
    /// An RST with this message id.
    Reset(u16),
    /// An error response (piggybacked for a CON request, NON for a NON
    /// request) with a diagnostic payload (RFC 7252 §5.5.2).
    Respond {
        /// 4.00, 4.02 or 4.05.
        code: Code,
        /// Human-readable reason naming the option where there is one.
        diagnostic: String,
    },
}

/// Maps a fault to its wire reaction. Every malformed-input decision of the
/// endpoint goes through here.
pub fn wire_reaction(fault: &Fault) -> Reaction {
    match fault {
        // RFC 7252 §4.2/§4.3: a message that cannot be processed is rejected
        // with RST if confirmable, silently ignored otherwise. Without a
        // readable header there is no message id to answer.
        Fault::Parse { error, header } => match (error, header) {
            (ParseError::UnsupportedVersion { .. }, _) | (_, None) => Reaction::Drop,
            (ParseError::FrameTooLong { .. }, _) => Reaction::Drop,
            // §4.1: an empty message with content is a format error; the
            // table answers it with RST whatever its type, except that an
            // RST is never answered.
            (ParseError::NonEmptyEmptyMessage { .. }, Some(h)) => match h.mtype {
                MessageType::Rst => Reaction::Drop,
                _ => Reaction::Reset(h.message_id),
            },
            (_, Some(h)) if h.mtype == MessageType::Con => Reaction::Reset(h.message_id),
            (_, Some(_)) => Reaction::Drop,
        },
        Fault::Request(error) => Reaction::Respond {
            code: error.response_code(),
            diagnostic: error.to_string(),
        },
        Fault::Ping { message_id } => Reaction::Reset(*message_id),
        Fault::UnknownResponseCode(_) => Reaction::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coap_codec::OptionNumber;

    fn header(mtype: MessageType) -> Option<Header> {
        Some(Header {
            mtype,
            tkl: 0,
            code: Code::GET,
            message_id: 7,
        })
    }

    #[test]
    fn parse_errors_reset_con_and_drop_others() {
        let error = ParseError::InvalidTokenLength { tkl: 9 };
        assert_eq!(
            wire_reaction(&Fault::Parse {
                error,
                header: header(MessageType::Con)
            }),
            Reaction::Reset(7)
        );
        for t in [MessageType::Non, MessageType::Ack, MessageType::Rst] {
            assert_eq!(
                wire_reaction(&Fault::Parse {
                    error,
                    header: header(t)
                }),
                Reaction::Drop
            );
        }
        assert_eq!(
            wire_reaction(&Fault::Parse {
                error,
                header: None
            }),
            Reaction::Drop
        );
    }

    #[test]
    fn empty_message_with_content_resets_unless_ack_or_rst() {
        let error = ParseError::NonEmptyEmptyMessage { offset: 4 };
        assert_eq!(
            wire_reaction(&Fault::Parse {
                error,
                header: header(MessageType::Non)
            }),
            Reaction::Reset(7)
        );
        assert_eq!(
            wire_reaction(&Fault::Parse {
                error,
                header: header(MessageType::Rst)
            }),
            Reaction::Drop
        );
    }

    #[test]
    fn request_errors_answer_with_their_code_and_name_the_option() {
        let r = wire_reaction(&Fault::Request(RequestError::UnrecognizedCriticalOption {
            number: OptionNumber(9999),
        }));
        match r {
            Reaction::Respond { code, diagnostic } => {
                assert_eq!(code, Code::BAD_OPTION);
                assert!(diagnostic.contains("9999"), "{diagnostic}");
            }
            other => panic!("{other:?}"),
        }
    }
}
