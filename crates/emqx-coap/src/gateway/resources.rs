//! The resources: `mqtt/connection` (sessions, tokens, heartbeats) and
//! `ps/{topic}` (publish, observe, cancel, read retained), with
//! authentication, ACL and mountpoint.

use super::*;

impl Gateway {
    pub(super) async fn route(
        &self,
        listener: ListenerId,
        peer: &Peer,
        message: &Message,
        observe_registration: bool,
        now: Instant,
    ) -> Result<Reply, Failure> {
        let mut path = message.uri_path();
        match path.next() {
            Some(b"ps") => {
                self.pubsub(listener, peer, message, path, observe_registration, now)
                    .await
            }
            Some(b"mqtt") => match (path.next(), path.next()) {
                (Some(b"connection"), None) => self.connection(listener, peer, message, now).await,
                _ => Err(Failure::NotFound("no such resource".into())),
            },
            _ => Err(Failure::NotFound("no such resource".into())),
        }
    }

    // ---- mqtt/connection -------------------------------------------------

    async fn connection(
        &self,
        listener: ListenerId,
        peer: &Peer,
        message: &Message,
        now: Instant,
    ) -> Result<Reply, Failure> {
        let code = message.code;
        if code != Code::POST && code != Code::PUT && code != Code::DELETE {
            return Err(Failure::MethodNotAllowed);
        }
        let params = Params::parse(message)?;
        match code {
            Code::POST => self.connect(listener, peer, params, now).await,
            Code::PUT => {
                self.check_session(listener, peer, &params, now).await?;
                Ok(Reply::code(Code::CHANGED))
            }
            _ => {
                let who = self.check_session(listener, peer, &params, now).await?;
                let session = who.session.and_then(|c| self.state().sessions.remove(&c));
                if let Some(session) = session {
                    self.end_session(session, "closed by the client", Ending::Silent)
                        .await;
                }
                Ok(Reply::code(Code::DELETED))
            }
        }
    }

    async fn connect(
        &self,
        listener: ListenerId,
        peer: &Peer,
        params: Params,
        now: Instant,
    ) -> Result<Reply, Failure> {
        let clientid = params
            .clientid
            .clone()
            .or_else(|| identity_clientid(peer))
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Failure::BadRequest("clientid is required".into()))?;
        if self
            .state()
            .sessions
            .clientid_at(listener, peer)
            .is_some_and(|c| c != clientid)
        {
            return Err(Failure::BadRequest(
                "this address is connected with another clientid".into(),
            ));
        }
        let client = ClientInfo {
            clientid: Some(clientid.clone()),
            username: params.username,
            password: params.password,
        };
        self.authenticate(&client).await?;
        self.check_takeover(&self.state().sessions, &client)?;
        let max_age = self.inner.settings.unavailable_max_age;
        self.inner
            .broker
            .connect_client(&client)
            .await
            .map_err(|e| Failure::from_broker(e, max_age))?;
        let token = new_token();
        let replaced = {
            let mut state = self.state();
            // Again under the lock: another user may have connected with
            // this clientid while we authenticated.
            self.check_takeover(&state.sessions, &client)?;
            if state.sessions.get(&clientid).is_none()
                && state.sessions.len() >= self.inner.settings.max_sessions
            {
                return Err(Failure::Unavailable {
                    reason: "too many sessions".into(),
                    max_age,
                });
            }
            state.sessions.insert(Session {
                client: client.clone(),
                token: token.clone(),
                listener,
                peer: peer.clone(),
                last_seen: now,
                connected_at: now,
            })
        };
        if replaced.is_some() {
            // A device that connects again (e.g. after a reboot) takes over:
            // the old session's observers are gone with it.
            for (subscriber, _) in self.session_observers(&clientid) {
                self.release(subscriber, Ending::Silent).await;
            }
        }
        if let Some(node) = &self.inner.settings.presence_node {
            let _ = publish_presence(&*self.inner.broker, node, &client, PresenceEvent::Connected)
                .await;
        }
        tracing::info!(clientid = %clientid, peer = %peer, "session started");
        Ok(Reply {
            response: response(Code::CREATED)
                .with_content_format(ContentFormat::TEXT_PLAIN)
                .with_payload(token.into_bytes()),
            subscriber: None,
        })
    }

    /// Checks clientid + token of a connection-mode request; marks the
    /// session active and moves it to `peer` if the address changed.
    async fn check_session(
        &self,
        listener: ListenerId,
        peer: &Peer,
        params: &Params,
        now: Instant,
    ) -> Result<Who, Failure> {
        let clientid = params.clientid.clone().or_else(|| identity_clientid(peer));
        let (Some(clientid), Some(token)) = (clientid, params.token.as_deref()) else {
            return Err(Failure::BadRequest(
                "clientid and token are required".into(),
            ));
        };
        let keys = [
            LimitKey::Ip(peer.addr.ip()),
            LimitKey::Client(clientid.clone()),
        ];
        let (client, moved) = {
            let mut state = self.state();
            if let Some(wait) = state.limiter.blocked(&keys, now) {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(Failure::TooManyRequests {
                    retry_after: u32::try_from(secs).unwrap_or(u32::MAX),
                });
            }
            let client = match state.sessions.get(&clientid) {
                Some(session) if tokens_equal(&session.token, token) => session.client.clone(),
                Some(_) => {
                    // A wrong token for a live session: this is what token
                    // guessing looks like, so it counts against the limit.
                    state.limiter.record(&keys, now);
                    return Err(Failure::Unauthorized("bad clientid or token".into()));
                }
                // No session (never opened, or expired while the device
                // slept): there is no token to guess, so nothing is counted;
                // counting it would lock out NAT neighbours of a device that
                // merely woke up with a stale token.
                None => return Err(Failure::Unauthorized("bad clientid or token".into())),
            };
            let moved = state.sessions.touch(&clientid, listener, peer, now);
            if let Some((old_listener, old_peer)) = &moved {
                for observer in state.observers.values_mut() {
                    if observer.session.as_deref() == Some(clientid.as_str())
                        && observer.listener == *old_listener
                        && observer.listener == listener
                        && observer.peer == *old_peer
                    {
                        observer.peer = peer.clone();
                    }
                }
            }
            (client, moved)
        };
        if let Some((old_listener, old_peer)) = moved {
            tracing::debug!(clientid = %clientid, from = %old_peer, to = %peer, "session moved");
            if old_listener == listener
                && let Some(handle) = self.listener(listener)
            {
                let _ = handle.rebind(old_peer, peer.clone()).await;
            }
        }
        Ok(Who {
            client,
            session: Some(clientid),
        })
    }

    /// Who a `ps` request acts for: the session (connection mode, or any
    /// request that carries a token), else the request's own credentials.
    async fn resolve(
        &self,
        listener: ListenerId,
        peer: &Peer,
        params: &Params,
        now: Instant,
    ) -> Result<Who, Failure> {
        if self.inner.settings.connection_required || params.token.is_some() {
            return self.check_session(listener, peer, params, now).await;
        }
        let client = ClientInfo {
            clientid: params
                .clientid
                .clone()
                .or_else(|| identity_clientid(peer))
                .filter(|c| !c.is_empty()),
            username: params.username.clone(),
            password: params.password.clone(),
        };
        self.authenticate(&client).await?;
        Ok(Who {
            client,
            session: None,
        })
    }

    /// Checks username/password against the authentication file, if one is
    /// configured, off the async threads and with bounded concurrency.
    /// With an authentication file a clientid's live session belongs to
    /// the user who opened it: the same user may take it over (a device
    /// that reconnects), another user may not (it would end the device's
    /// session and, with `${clientid}` ACL rules, get its topics). Without
    /// an authentication file usernames prove nothing and any connect takes
    /// over.
    fn check_takeover(&self, sessions: &Sessions, client: &ClientInfo) -> Result<(), Failure> {
        if self.inner.auth.is_none() {
            return Ok(());
        }
        let other_user = client
            .clientid
            .as_deref()
            .and_then(|id| sessions.get(id))
            .is_some_and(|s| s.client.username != client.username);
        if other_user {
            return Err(Failure::Unauthorized(
                "this clientid has a session of another user".into(),
            ));
        }
        Ok(())
    }

    async fn authenticate(&self, client: &ClientInfo) -> Result<(), Failure> {
        let Some(auth) = self.inner.auth.clone() else {
            return Ok(());
        };
        let (Some(username), Some(password)) = (client.username.clone(), client.password.clone())
        else {
            return Err(Failure::Unauthorized(
                "username and password are required".into(),
            ));
        };
        let permit = self
            .inner
            .auth_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Failure::Internal("authentication unavailable".into()))?;
        let cache = self.inner.auth_cache.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match cache {
                Some(cache) => cache.authenticate_at(&auth, &username, &password, Instant::now()),
                None => auth.authenticate(&username, &password),
            }
        })
        .await
        .map_err(|_| Failure::Internal("authentication failed to run".into()))?;
        result.map_err(|error| {
            tracing::debug!(clientid = ?client.clientid, username = ?client.username, %error, "authentication failed");
            Failure::Unauthorized("authentication failed".into())
        })
    }

    fn authorize(&self, who: &Who, action: Action, topic: &str) -> Result<(), Failure> {
        let Some(auth) = &self.inner.auth else {
            return Ok(());
        };
        let requester = Requester {
            clientid: who.client.clientid.as_deref(),
            username: who.client.username.as_deref(),
        };
        if auth.authorize(requester, action, topic) {
            Ok(())
        } else {
            Err(Failure::Unauthorized(
                "not authorized for this topic".into(),
            ))
        }
    }

    // ---- ps/{topic} ----------------------------------------------------

    async fn pubsub<'m>(
        &self,
        listener: ListenerId,
        peer: &Peer,
        message: &'m Message,
        path: impl Iterator<Item = &'m [u8]>,
        observe_registration: bool,
        now: Instant,
    ) -> Result<Reply, Failure> {
        let code = message.code;
        if code != Code::POST && code != Code::GET {
            return Err(Failure::MethodNotAllowed);
        }
        let topic = topic_from_path(path)?;
        let params = Params::parse(message)?;
        if code == Code::POST {
            return self
                .publish(listener, peer, message, topic, params, now)
                .await;
        }
        match message.observe() {
            Some(0) => {
                if !observe_registration || message.token.is_empty() {
                    return Err(Failure::BadRequest("observe needs a token".into()));
                }
                self.observe(listener, peer, message, topic, params, now)
                    .await
            }
            Some(1) => {
                self.unobserve(listener, peer, message, topic, params, now)
                    .await
            }
            _ => self.read(listener, peer, topic, params, now).await,
        }
    }

    async fn publish(
        &self,
        listener: ListenerId,
        peer: &Peer,
        message: &Message,
        topic: String,
        params: Params,
        now: Instant,
    ) -> Result<Reply, Failure> {
        let name = TopicName::new(topic)
            .map_err(|e| Failure::BadRequest(format!("invalid topic: {e}").into()))?;
        let qos = match params.qos()? {
            Some(qos) => qos,
            None => self
                .inner
                .settings
                .publish_qos
                .resolve(message.mtype == MessageType::Con),
        };
        let retain = params.retain()?;
        let expiry = params.expiry()?;
        let max = self.inner.settings.max_payload_size;
        if message.payload.len() > max {
            return Err(Failure::TooLarge { max });
        }
        let who = self.resolve(listener, peer, &params, now).await?;
        self.authorize(&who, Action::Publish, name.as_str())?;
        let mounted = self
            .inner
            .settings
            .mountpoint
            .mount_name(
                who.client.clientid.as_deref(),
                who.client.username.as_deref(),
                &name,
            )
            .map_err(|e| Failure::BadRequest(e.to_string().into()))?;
        let mut publish = Publish::new(mounted, message.payload.clone())
            .qos(qos)
            .retain(retain)
            .expiry(expiry);
        publish.content_type = message
            .content_format()
            .and_then(ContentFormat::media_type)
            .map(str::to_owned);
        let max_age = self.inner.settings.unavailable_max_age;
        let started = Instant::now();
        let published = self.inner.broker.publish(&who.client, publish).await;
        if qos != Qos::AtMostOnce {
            self.inner
                .observer
                .broker_round_trip(BrokerOperation::Publish, started.elapsed());
        }
        published.map_err(|e| Failure::from_broker(e, max_age))?;
        self.inner.observer.published(qos);
        Ok(Reply::code(Code::CHANGED))
    }

    async fn observe(
        &self,
        listener: ListenerId,
        peer: &Peer,
        message: &Message,
        topic: String,
        params: Params,
        now: Instant,
    ) -> Result<Reply, Failure> {
        let filter = TopicFilter::new(topic)
            .map_err(|e| Failure::BadRequest(format!("invalid topic filter: {e}").into()))?;
        let qos = match params.qos()? {
            Some(qos) => qos,
            None => self
                .inner
                .settings
                .subscribe_qos
                .resolve(message.mtype == MessageType::Con),
        };
        let who = self.resolve(listener, peer, &params, now).await?;
        self.authorize(&who, Action::Subscribe, filter.as_str())?;
        let mounted = self.mount_filter(&who, &filter)?;
        let max_age = self.inner.settings.unavailable_max_age;
        let subscriber = SubscriberId(self.inner.next_subscriber.fetch_add(1, Ordering::Relaxed));
        {
            let mut state = self.state();
            if state.observers.len() >= self.inner.settings.max_observers {
                return Err(Failure::Unavailable {
                    reason: "too many observers".into(),
                    max_age,
                });
            }
            state.observers.insert(
                subscriber,
                Observer {
                    client: who.client.clone(),
                    filter: mounted.clone(),
                    qos,
                    listener,
                    peer: peer.clone(),
                    token: message.token.clone(),
                    session: who.session.clone(),
                    relation: None,
                    early: VecDeque::new(),
                    last_activity: now,
                },
            );
        }
        let started = Instant::now();
        let subscribed = self
            .inner
            .broker
            .subscribe(&who.client, subscriber, &mounted, qos)
            .await;
        self.inner
            .observer
            .broker_round_trip(BrokerOperation::Subscribe, started.elapsed());
        let subscribed = match subscribed {
            Ok(subscribed) => subscribed,
            Err(error) => {
                self.state().observers.remove(&subscriber);
                return Err(Failure::from_broker(error, max_age));
            }
        };
        let mut answer = response(Code::CONTENT).with_observe(0);
        if let Some(retained) = subscribed.retained.into_iter().next() {
            answer = with_content(answer, &retained);
        }
        Ok(Reply {
            response: answer,
            subscriber: Some(subscriber),
        })
    }

    async fn unobserve(
        &self,
        listener: ListenerId,
        peer: &Peer,
        message: &Message,
        topic: String,
        params: Params,
        now: Instant,
    ) -> Result<Reply, Failure> {
        let filter = TopicFilter::new(topic)
            .map_err(|e| Failure::BadRequest(format!("invalid topic filter: {e}").into()))?;
        let who = self.resolve(listener, peer, &params, now).await?;
        let mounted = self.mount_filter(&who, &filter)?;
        let ended: Vec<SubscriberId> = {
            let state = self.state();
            state
                .observers
                .iter()
                .filter(|(_, o)| {
                    o.listener == listener
                        && ((o.peer == *peer && o.token == message.token)
                            || (o.filter == mounted
                                && (o.peer == *peer
                                    || (who.session.is_some() && o.session == who.session))))
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for subscriber in ended {
            self.release(subscriber, Ending::Silent).await;
        }
        Ok(Reply::code(UNSUBSCRIBED))
    }

    async fn read(
        &self,
        listener: ListenerId,
        peer: &Peer,
        topic: String,
        params: Params,
        now: Instant,
    ) -> Result<Reply, Failure> {
        let name = TopicName::new(topic)
            .map_err(|e| Failure::BadRequest(format!("invalid topic: {e}").into()))?;
        let who = self.resolve(listener, peer, &params, now).await?;
        self.authorize(&who, Action::Subscribe, name.as_str())?;
        let mounted = self
            .inner
            .settings
            .mountpoint
            .mount_name(
                who.client.clientid.as_deref(),
                who.client.username.as_deref(),
                &name,
            )
            .map_err(|e| Failure::BadRequest(e.to_string().into()))?;
        let max_age = self.inner.settings.unavailable_max_age;
        match self
            .inner
            .broker
            .retained(&who.client, &mounted)
            .await
            .map_err(|e| Failure::from_broker(e, max_age))?
        {
            Some(retained) => Ok(Reply {
                response: with_content(response(Code::CONTENT), &retained),
                subscriber: None,
            }),
            None => Err(Failure::NotFound("no retained message".into())),
        }
    }

    fn mount_filter(&self, who: &Who, filter: &TopicFilter) -> Result<TopicFilter, Failure> {
        self.inner
            .settings
            .mountpoint
            .mount_filter(
                who.client.clientid.as_deref(),
                who.client.username.as_deref(),
                filter,
            )
            .map_err(|e| Failure::BadRequest(e.to_string().into()))
    }
}
