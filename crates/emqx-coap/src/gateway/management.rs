//! What the management API needs: listing connection-mode clients and
//! their subscriptions, ending a session, sending a CoAP request to a
//! device at its latest address.

use super::*;

impl Gateway {
    /// The connection-mode clients whose clientid contains `like` (all
    /// with `""`), sorted by clientid, at time `now`.
    pub fn clients_at(&self, like: &str, now: Instant) -> Vec<ClientSummary> {
        let query = ClientQuery {
            clientid: Some(like.to_owned()),
            ..ClientQuery::default()
        };
        self.search_clients(&query, 0, usize::MAX, now).clients
    }

    /// The connection-mode clients matching `query`, sorted by clientid:
    /// at most `limit` of them after skipping `offset`, with the number of
    /// matches in all, at time `now`.
    ///
    /// One pass over the sessions to match, a sort of the matching
    /// clientids, and one pass over the observers to count the page's
    /// subscriptions.
    pub fn search_clients(
        &self,
        query: &ClientQuery,
        offset: usize,
        limit: usize,
        now: Instant,
    ) -> ClientPage {
        let state = self.state();
        let mut matching: Vec<&Session> = state
            .sessions
            .iter()
            .filter(|s| matches_query(query, s))
            .collect();
        let total = matching.len();
        matching.sort_unstable_by(|a, b| a.client.clientid.cmp(&b.client.clientid));
        let page: Vec<&Session> = matching.into_iter().skip(offset).take(limit).collect();
        let mut counts: HashMap<&str, usize> = page
            .iter()
            .map(|s| (s.client.clientid.as_deref().unwrap_or_default(), 0))
            .collect();
        if !counts.is_empty() {
            for observer in state.observers.values() {
                if let Some(n) = observer.session.as_deref().and_then(|c| counts.get_mut(c)) {
                    *n += 1;
                }
            }
        }
        let clients = page
            .into_iter()
            .map(|s| {
                let clientid = s.client.clientid.as_deref().unwrap_or_default();
                let subscriptions = counts.get(clientid).copied().unwrap_or(0);
                summary_with(s, subscriptions, now)
            })
            .collect();
        ClientPage { clients, total }
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
        self.kick_session(clientid).await.is_some()
    }

    /// Ends a client's session (its observers get a final 4.01) and tells
    /// where the device was last seen, so that the caller can also close
    /// a transport session there (e.g. the DTLS session of
    /// [`KickedSession::peer`]); `None` if there is no such session.
    pub async fn kick_session(&self, clientid: &str) -> Option<KickedSession> {
        let session = self.state().sessions.remove(clientid)?;
        let kicked = KickedSession {
            listener: session.listener,
            peer: session.peer.clone(),
        };
        self.end_session(
            session,
            "kicked",
            Ending::Final(Code::UNAUTHORIZED, "session closed by the gateway"),
        )
        .await;
        Some(kicked)
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
    let clientid = session.client.clientid.as_deref().unwrap_or_default();
    let subscriptions = state
        .observers
        .values()
        .filter(|o| o.session.as_deref() == Some(clientid))
        .count();
    summary_with(session, subscriptions, now)
}

fn summary_with(session: &Session, subscriptions: usize, now: Instant) -> ClientSummary {
    ClientSummary {
        subscriptions,
        clientid: session.client.clientid.clone().unwrap_or_default(),
        username: session.client.username.clone(),
        peer: session.peer.to_string(),
        idle: now.saturating_duration_since(session.last_seen),
        connected_for: now.saturating_duration_since(session.connected_at),
    }
}

/// Whether a session matches every field given in `query`.
fn matches_query(query: &ClientQuery, session: &Session) -> bool {
    let clientid = session.client.clientid.as_deref().unwrap_or_default();
    let username = session.client.username.as_deref();
    let contains = |field: Option<&str>, wanted: &Option<String>| match wanted {
        None => true,
        Some(wanted) => field.is_some_and(|f| f.contains(wanted.as_str())),
    };
    if !contains(Some(clientid), &query.clientid) || !contains(username, &query.username) {
        return false;
    }
    // The peer is only formatted when a filter needs it.
    if query.peer.is_none() && query.any.is_none() {
        return true;
    }
    let peer = session.peer.to_string();
    if !contains(Some(&peer), &query.peer) {
        return false;
    }
    match &query.any {
        None => true,
        Some(any) => {
            clientid.contains(any.as_str())
                || username.is_some_and(|u| u.contains(any.as_str()))
                || peer.contains(any.as_str())
        }
    }
}
