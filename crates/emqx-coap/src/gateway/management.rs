//! What the management API needs: listing connection-mode clients and
//! their subscriptions, ending a session, sending a CoAP request to a
//! device at its latest address.

use super::*;

impl Gateway {
    /// The connection-mode clients whose clientid contains `like` (all
    /// with `""`), sorted by clientid, at time `now`.
    pub fn clients_at(&self, like: &str, now: Instant) -> Vec<ClientSummary> {
        let state = self.state();
        let mut clients: Vec<ClientSummary> = state
            .sessions
            .iter()
            .filter(|s| {
                s.client
                    .clientid
                    .as_deref()
                    .is_some_and(|c| c.contains(like))
            })
            .map(|s| summary(&state, s, now))
            .collect();
        clients.sort_by(|a, b| a.clientid.cmp(&b.clientid));
        clients
    }

    /// One connection-mode client, at time `now`.
    pub fn client_at(&self, clientid: &str, now: Instant) -> Option<ClientSummary> {
        let state = self.state();
        state
            .sessions
            .get(clientid)
            .map(|s| summary(&state, s, now))
    }

    /// The subscriptions of a connection-mode client (`None`: no such
    /// client), sorted by filter.
    pub fn subscriptions(&self, clientid: &str) -> Option<Vec<SubscriptionSummary>> {
        let state = self.state();
        state.sessions.get(clientid)?;
        let mut list: Vec<SubscriptionSummary> = state
            .observers
            .values()
            .filter(|o| o.session.as_deref() == Some(clientid))
            .map(|o| SubscriptionSummary {
                filter: o.filter.as_str().to_owned(),
                qos: o.qos,
            })
            .collect();
        list.sort_by(|a, b| a.filter.cmp(&b.filter));
        Some(list)
    }

    /// Ends a client's session (its observers get a final 4.01); false if
    /// there is none.
    pub async fn kick(&self, clientid: &str) -> bool {
        let session = self.state().sessions.remove(clientid);
        match session {
            Some(session) => {
                self.end_session(
                    session,
                    "kicked",
                    Ending::Final(Code::UNAUTHORIZED, "session closed by the gateway"),
                )
                .await;
                true
            }
            None => false,
        }
    }

    /// Sends a CoAP request (CON) to the latest address of a
    /// connection-mode client and waits at most `timeout` for its answer.
    pub async fn request_device(
        &self,
        clientid: &str,
        request: Message,
        timeout: Duration,
    ) -> Result<Message, DeviceRequestError> {
        let (listener, peer) = {
            let state = self.state();
            let session = state
                .sessions
                .get(clientid)
                .ok_or(DeviceRequestError::UnknownClient)?;
            (session.listener, session.peer.clone())
        };
        let handle = self
            .listener(listener)
            .ok_or(DeviceRequestError::UnknownClient)?;
        match tokio::time::timeout(timeout, handle.request(peer, request, true)).await {
            Err(_) => Err(DeviceRequestError::Timeout),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(ServerError::Request(coap_endpoint::RequestFailure::Timeout))) => {
                Err(DeviceRequestError::Timeout)
            }
            Ok(Err(error)) => Err(DeviceRequestError::Failed(error.to_string())),
        }
    }
}

fn summary(state: &State, session: &Session, now: Instant) -> ClientSummary {
    let clientid = session.client.clientid.clone().unwrap_or_default();
    ClientSummary {
        subscriptions: state
            .observers
            .values()
            .filter(|o| o.session.as_deref() == Some(clientid.as_str()))
            .count(),
        clientid,
        username: session.client.username.clone(),
        peer: session.peer.to_string(),
        idle: now.saturating_duration_since(session.last_seen),
    }
}
