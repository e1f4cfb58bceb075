//! Why a device request is refused, and the one place that maps each reason
//! to its CoAP response code.

use coap_endpoint::coap_codec::Code;

use crate::authorization::AuthorizationError;
use crate::downstream::DownstreamError;
use crate::message_limits::{DataVolumeExceeded, PayloadTooLarge};
use crate::request_id::RequestIdError;

/// A device request the adapter does not accept (or could not forward).
///
/// [`RequestRejected::code`] is the only mapping from a reason to a CoAP
/// code; the response carries the `Display` text as a `text/plain`
/// diagnostic payload (5.03 also carries Max-Age 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestRejected {
    /// The first path segment names no resource (or there is none). 4.04.
    #[error("resource not found")]
    UnknownResource,
    /// Neither POST nor PUT. 4.05.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// POST without an authenticated identity. 4.01.
    #[error("authentication required")]
    Unauthenticated,
    /// The authenticated identity is no longer known to the registry. 4.01.
    #[error("unknown identity")]
    UnknownIdentity,
    /// The path does not have the shape the method requires (e.g. a PUT
    /// without tenant or device). 4.04.
    #[error("{0}")]
    PathShape(&'static str),
    /// An authenticated client named another tenant. 4.03.
    #[error("tenant in URI does not match the authenticated tenant")]
    ForeignTenant,
    /// Events and command responses must be confirmable. 4.00.
    #[error("{0} must be sent as CON")]
    NotConfirmable(&'static str),
    /// The body, Content-Format and `empty` do not fit together. 4.00.
    #[error("{0}")]
    PayloadRule(&'static str),
    /// `hono-cmd-status` missing or not 200-299/400-599. 4.00.
    #[error("missing or invalid hono-cmd-status")]
    CommandStatus,
    /// The request id of a command response is missing or not one of ours.
    /// 4.00.
    #[error("invalid command request id: {0}")]
    RequestId(#[from] RequestIdError),
    /// Body larger than `--max-payload-size`. 4.13.
    #[error(transparent)]
    PayloadTooLarge(#[from] PayloadTooLarge),
    /// Tenant, adapter, device or gateway checks failed. 4.03, 4.04 or 5.03
    /// (see [`AuthorizationError::status`]).
    #[error(transparent)]
    Authorization(#[from] AuthorizationError),
    /// The tenant's data volume is used up. 4.29.
    #[error(transparent)]
    DataVolume(#[from] DataVolumeExceeded),
    /// The downstream refused or is unavailable. 5.03 (4.00 for
    /// [`DownstreamError::Invalid`]).
    #[error(transparent)]
    Downstream(#[from] DownstreamError),
    /// The adapter is shutting down. 5.03.
    #[error("adapter is shutting down")]
    ShuttingDown,
}

impl RequestRejected {
    /// The CoAP response code for this rejection.
    pub fn code(&self) -> Code {
        match self {
            Self::UnknownResource | Self::PathShape(_) => Code::NOT_FOUND,
            Self::MethodNotAllowed => Code::METHOD_NOT_ALLOWED,
            Self::Unauthenticated | Self::UnknownIdentity => Code::UNAUTHORIZED,
            Self::ForeignTenant => Code::FORBIDDEN,
            Self::NotConfirmable(_)
            | Self::PayloadRule(_)
            | Self::CommandStatus
            | Self::RequestId(_) => Code::BAD_REQUEST,
            Self::PayloadTooLarge(_) => Code::REQUEST_ENTITY_TOO_LARGE,
            Self::Authorization(e) => match e.status() {
                403 => Code::FORBIDDEN,
                404 => Code::NOT_FOUND,
                _ => Code::SERVICE_UNAVAILABLE,
            },
            Self::DataVolume(_) => Code::TOO_MANY_REQUESTS,
            Self::Downstream(DownstreamError::Invalid(_)) => Code::BAD_REQUEST,
            Self::Downstream(_) | Self::ShuttingDown => Code::SERVICE_UNAVAILABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let cases: Vec<(RequestRejected, Code)> = vec![
            (RequestRejected::UnknownResource, Code::NOT_FOUND),
            (RequestRejected::MethodNotAllowed, Code::METHOD_NOT_ALLOWED),
            (RequestRejected::Unauthenticated, Code::UNAUTHORIZED),
            (RequestRejected::ForeignTenant, Code::FORBIDDEN),
            (RequestRejected::CommandStatus, Code::BAD_REQUEST),
            (
                RequestRejected::PayloadTooLarge(PayloadTooLarge { len: 3, max: 2 }),
                Code::REQUEST_ENTITY_TOO_LARGE,
            ),
            (
                RequestRejected::Authorization(AuthorizationError::TenantDisabled("t".into())),
                Code::FORBIDDEN,
            ),
            (
                RequestRejected::Authorization(AuthorizationError::DeviceDisabled {
                    tenant_id: "t".into(),
                    device_id: "d".into(),
                }),
                Code::NOT_FOUND,
            ),
            (
                RequestRejected::Downstream(DownstreamError::Unroutable),
                Code::SERVICE_UNAVAILABLE,
            ),
            (
                RequestRejected::Downstream(DownstreamError::Invalid("x".into())),
                Code::BAD_REQUEST,
            ),
        ];
        for (rejection, code) in cases {
            assert_eq!(rejection.code(), code, "{rejection:?}");
        }
    }
}
