//! A DTLS-PSK session made with the workspace's own client, for tests that
//! keep using a session after the gateway ended it.

use std::net::SocketAddr;
use std::time::Duration;

use coap_dtls::{ClientConfig, DtlsClient, DtlsConnector};
use coap_endpoint::coap_codec::{Code, Message};

/// Handshakes with `server` as `identity` with `key`; fails unless done
/// within 10 s.
pub async fn session(server: SocketAddr, identity: &str, key: &str) -> DtlsClient {
    let connector = DtlsConnector::new(ClientConfig::new(identity, key)).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        DtlsClient::connect(&connector, server),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed")
}

/// The first non-empty CoAP message on `session` within `limit` (empty
/// ACKs are skipped), or `None` (no answer, or a closed session: a
/// close_notify from the server).
pub async fn first_response(session: &mut DtlsClient, limit: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let bytes = match session.recv_timeout(left).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) | Err(_) => return None,
        };
        let message = Message::from_bytes(bytes).unwrap();
        if message.code != Code::EMPTY {
            return Some(message);
        }
    }
}
