//! Identifiers, events, transmits and errors of the state machine.

use std::fmt;

use bytes::Bytes;
use coap_codec::{EncodeError, Message};

use crate::peer::Peer;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub(crate) u64);

        impl $name {
            /// The raw number (unique within one endpoint).
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "#{}"), self.0)
            }
        }
    };
}

id_type!(
    /// An incoming request handed to the application and not yet answered.
    RequestId,
    "request"
);
id_type!(
    /// An observe relation (RFC 7641) held by the server side.
    RelationId,
    "relation"
);
id_type!(
    /// A request this endpoint sent as a client.
    ClientRequestId,
    "client-request"
);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub peer: Peer,
    /// The encoded CoAP message.
    pub bytes: Bytes,
}

/// A request for the application ([`Event::Request`]).
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    /// Pass to [`Endpoint::respond`](crate::Endpoint::respond).
    pub id: RequestId,
    /// Who sent it.
    pub peer: Peer,
    /// The request. For a Block1 transfer the payload is the whole body and
    /// the Block1/Block2 options are removed (the endpoint handles them).
    pub message: Message,
    /// GET with Observe 0 and a non-empty token: answering with a 2.xx that
    /// carries an Observe option (any value) establishes a relation.
    pub observe_registration: bool,
}

/// Why a relation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// The client sent GET with Observe 1.
    Deregistered,
    /// The client answered a notification with RST.
    Reset,
    /// A confirmable notification was not acknowledged after MAX_RETRANSMIT.
    Timeout,
    /// The client registered again with the same token and the application
    /// answered without Observe.
    Declined,
    /// [`rebind`](crate::Endpoint::rebind) could not move the relation to
    /// the new address: the new address already holds a relation with the
    /// same token, or `max_relations_per_peer` relations.
    NotRebound,
}

/// Why a client request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestFailure {
    /// No ACK after MAX_RETRANSMIT, or no response within `response_timeout`.
    Timeout,
    /// The server answered with RST.
    Reset,
    /// A Block2 response body exceeded `max_body_size`.
    BodyTooLarge,
    /// The server broke the block-wise protocol (e.g. an unexpected block number).
    Protocol,
}

/// Output of the state machine for the application.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A request to answer with [`Endpoint::respond`](crate::Endpoint::respond).
    Request(IncomingRequest),
    /// A response to a request sent with
    /// [`Endpoint::send_request`](crate::Endpoint::send_request). For an
    /// observing request this repeats once per notification.
    Response {
        /// The request.
        request: ClientRequestId,
        /// Who answered.
        peer: Peer,
        /// The response; a Block2 body is reassembled and the Block2 option removed.
        response: Message,
    },
    /// A client request ended without (further) response.
    RequestFailed {
        /// The request.
        request: ClientRequestId,
        /// Why.
        reason: RequestFailure,
    },
    /// A server-side observe relation ended without the application asking
    /// for it (so it can unsubscribe upstream).
    ObserveCancelled {
        /// The relation.
        relation: RelationId,
        /// The observer.
        peer: Peer,
        /// Why.
        reason: CancelReason,
    },
}

/// Why [`Endpoint::respond`](crate::Endpoint::respond) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RespondError {
    /// The request was already answered or never existed.
    #[error("unknown or already answered request")]
    UnknownRequest,
    /// The response cannot be encoded; the client got 5.00 instead.
    #[error("response cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    /// The response had to go as a separate CON, but the peer already has
    /// `max_queued_per_peer` confirmable messages waiting behind the one in
    /// flight (it does not acknowledge). The response was not sent and the
    /// request is finished; an observe registration made no relation.
    #[error("too many messages queued for this peer; response not sent")]
    QueueFull,
}

/// Why [`Endpoint::notify`](crate::Endpoint::notify) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The relation has ended.
    #[error("unknown or cancelled observe relation")]
    UnknownRelation,
    /// The notification cannot be encoded.
    #[error("notification cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    /// A final (non-2.xx) notification could not be queued: the peer
    /// already has `max_queued_per_peer` confirmable messages waiting and
    /// none of them is a notification it could replace. The relation has
    /// ended all the same, but the observer was not told.
    #[error("too many messages queued for this peer; final notification not sent")]
    QueueFull,
}

/// Why [`Endpoint::send_request`](crate::Endpoint::send_request) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendRequestError {
    /// The message's code is not a request method.
    #[error("not a request code")]
    NotARequest,
    /// Too many confirmable messages are queued for this peer.
    #[error("too many messages queued for this peer")]
    QueueFull,
    /// The body exceeds `max_body_size`.
    #[error("request body exceeds max_body_size")]
    BodyTooLarge,
    /// The request cannot be encoded.
    #[error("request cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
}
