//! The tokio driver: one task owns the [`Endpoint`] and the [`Transport`];
//! application handlers run in tasks of their own and talk to it through
//! channels, so a slow handler never blocks the endpoint.
//!
//! ```text
//!  Transport ──recv──▶ driver task ──Request (with Responder)──▶ handler task(s)
//!      ▲                 │    ▲                                      │
//!      └────send─────────┘    └──── Command (respond, notify, ───────┘
//!                                   request, rebind, stats) from
//!                                   Responder / EndpointHandle
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_codec::{Code, Message, MessageType, OptionNumber};
use tokio::sync::{mpsc, oneshot};

use crate::config::{AckTimeout, ConfigError, EndpointConfig};
use crate::endpoint::Endpoint;
use crate::peer::Peer;
use crate::stats::Stats;
use crate::transport::{Transport, UdpTransport};
use crate::types::{
    CancelReason, ClientRequestId, Event, NotifyError, RelationId, RequestFailure, RequestId,
    RespondError, SendRequestError,
};

/// A request handed to the application, with the means to answer it.
#[derive(Debug)]
pub struct IncomingRequestHandle {
    /// Who sent it (address and authenticated identity).
    pub peer: Peer,
    /// The request; a Block1 body is already reassembled.
    pub message: Message,
    /// GET + Observe 0 with a token: answer 2.xx with an Observe option to
    /// establish a relation.
    pub observe_registration: bool,
    /// Answers the request; dropping it unanswered sends 5.00.
    pub responder: Responder,
}

impl IncomingRequestHandle {
    /// Shortcut for `self.responder.set_ack_timeout(timeout)`.
    pub fn set_ack_timeout(&self, timeout: AckTimeout) {
        self.responder.set_ack_timeout(timeout);
    }

    /// Shortcut for `self.responder.respond(response)`.
    pub async fn respond(self, response: Message) -> Result<Option<RelationId>, ServerError> {
        self.responder.respond(response).await
    }
}

/// Answers one request, now or later, from any task.
#[derive(Debug)]
pub struct Responder {
    id: RequestId,
    commands: mpsc::UnboundedSender<Command>,
    answered: bool,
}

impl Responder {
    /// Changes when the empty ACK is sent if the answer is not ready
    /// (Hono's `timeoutToAck`): counted from the request's arrival.
    pub fn set_ack_timeout(&self, timeout: AckTimeout) {
        let _ = self.commands.send(Command::SetAckTimeout {
            id: self.id,
            timeout,
        });
    }

    /// Sends the response (type, message id and token are set by the
    /// endpoint). For an observe registration, `Ok(Some(relation))` means
    /// the relation is established; use the id with
    /// [`EndpointHandle::notify`].
    pub async fn respond(mut self, response: Message) -> Result<Option<RelationId>, ServerError> {
        self.answered = true;
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Respond {
                id: self.id,
                response,
                reply: Some(reply),
            })
            .map_err(|_| ServerError::Stopped)?;
        rx.await
            .map_err(|_| ServerError::Stopped)?
            .map_err(ServerError::Respond)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered {
            let response = response(Code::INTERNAL_SERVER_ERROR);
            let _ = self.commands.send(Command::Respond {
                id: self.id,
                response,
                reply: None,
            });
        }
    }
}

/// A response skeleton with `code` (type, message id and token are filled
/// in by the endpoint).
pub fn response(code: Code) -> Message {
    Message::new(MessageType::Ack, code, 0)
}

/// Errors of the driver's application-facing calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The driver has stopped.
    #[error("endpoint driver stopped")]
    Stopped,
    /// Answering failed.
    #[error(transparent)]
    Respond(#[from] RespondError),
    /// Notifying failed.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// The request could not be sent.
    #[error(transparent)]
    Send(#[from] SendRequestError),
    /// The request was sent but got no usable response.
    #[error("request failed: {0:?}")]
    Request(RequestFailure),
}

/// Events for the application besides requests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// An observe relation ended (deregistration, RST, CON timeout, …):
    /// unsubscribe upstream.
    ObserveCancelled {
        /// The relation.
        relation: RelationId,
        /// The observer.
        peer: Peer,
        /// Why.
        reason: CancelReason,
    },
}

/// Handles requests, one task per request.
///
/// Implemented for closures `Fn(IncomingRequestHandle) -> impl Future<Output = ()>`.
/// The handler answers through `request.responder` (dropping it unanswered
/// sends 5.00).
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, request: IncomingRequestHandle) -> impl Future<Output = ()> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(IncomingRequestHandle) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, request: IncomingRequestHandle) -> impl Future<Output = ()> + Send {
        self(request)
    }
}

/// A cloneable handle to a running driver: notifications, outgoing
/// requests, relation moves, statistics.
#[derive(Debug, Clone)]
pub struct EndpointHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl EndpointHandle {
    /// Sends a notification on `relation` (see [`Endpoint::notify`]).
    pub async fn notify(
        &self,
        relation: RelationId,
        notification: Message,
        confirmable: bool,
    ) -> Result<(), ServerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Notify {
            relation,
            notification,
            confirmable,
            reply,
        })?;
        rx.await
            .map_err(|_| ServerError::Stopped)?
            .map_err(ServerError::Notify)
    }

    /// Sends a request to `peer` and waits for its response (or the
    /// endpoint's timeout: MAX_RETRANSMIT for CON, then `response_timeout`).
    pub async fn request(
        &self,
        peer: Peer,
        request: Message,
        confirmable: bool,
    ) -> Result<Message, ServerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request,
            confirmable,
            reply,
        })?;
        rx.await.map_err(|_| ServerError::Stopped)?
    }

    /// Moves the relations of `old` to `new` (NAT rebinding); returns how many.
    pub async fn rebind(&self, old: Peer, new: Peer) -> Result<usize, ServerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Rebind { old, new, reply })?;
        rx.await.map_err(|_| ServerError::Stopped)
    }

    /// Ends a relation without telling the client.
    pub fn cancel_observe(&self, relation: RelationId) -> Result<(), ServerError> {
        self.send(Command::CancelObserve { relation })
    }

    /// A counters snapshot.
    pub async fn stats(&self) -> Result<Stats, ServerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats { reply })?;
        rx.await.map_err(|_| ServerError::Stopped)
    }

    fn send(&self, command: Command) -> Result<(), ServerError> {
        self.commands
            .send(command)
            .map_err(|_| ServerError::Stopped)
    }
}

#[derive(Debug)]
enum Command {
    Respond {
        id: RequestId,
        response: Message,
        reply: Option<oneshot::Sender<Result<Option<RelationId>, RespondError>>>,
    },
    SetAckTimeout {
        id: RequestId,
        timeout: AckTimeout,
    },
    Notify {
        relation: RelationId,
        notification: Message,
        confirmable: bool,
        reply: oneshot::Sender<Result<(), NotifyError>>,
    },
    Request {
        peer: Peer,
        request: Message,
        confirmable: bool,
        reply: oneshot::Sender<Result<Message, ServerError>>,
    },
    Rebind {
        old: Peer,
        new: Peer,
        reply: oneshot::Sender<usize>,
    },
    CancelObserve {
        relation: RelationId,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
}

/// Largest datagram the driver receives (a UDP payload can be no larger).
const RECEIVE_BUFFER: usize = 65_536;
/// Capacity of the event channel; events beyond it are dropped.
const EVENT_QUEUE: usize = 1024;

/// An endpoint bound to a transport, ready to [`run`](Self::run).
pub struct Server<T: Transport> {
    transport: T,
    endpoint: Endpoint,
    commands_tx: mpsc::UnboundedSender<Command>,
    commands_rx: mpsc::UnboundedReceiver<Command>,
    events_tx: Option<mpsc::Sender<ServerEvent>>,
    shutdown_grace: Duration,
}

impl<T: Transport> std::fmt::Debug for Server<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.transport.local_addr())
            .finish()
    }
}

impl Server<UdpTransport> {
    /// Binds a plain-UDP server.
    pub async fn bind(addr: SocketAddr, config: EndpointConfig) -> Result<Self, BindError> {
        let transport = UdpTransport::bind(addr).await?;
        Ok(Server::new(transport, config)?)
    }
}

/// Why [`Server::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The socket could not be bound.
    #[error("bind failed: {0}")]
    Io(#[from] io::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl<T: Transport> Server<T> {
    /// A server on `transport`.
    pub fn new(transport: T, config: EndpointConfig) -> Result<Self, ConfigError> {
        let endpoint = Endpoint::new(config)?;
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        Ok(Server {
            transport,
            endpoint,
            commands_tx,
            commands_rx,
            events_tx: None,
            shutdown_grace: Duration::from_secs(5),
        })
    }

    /// The transport's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.transport.local_addr()
    }

    /// A handle for notifications and outgoing requests.
    pub fn handle(&self) -> EndpointHandle {
        EndpointHandle {
            commands: self.commands_tx.clone(),
        }
    }

    /// The stream of [`ServerEvent`]s (observe relations ending). Call
    /// before `run`; a later call replaces the earlier receiver.
    pub fn events(&mut self) -> mpsc::Receiver<ServerEvent> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        self.events_tx = Some(tx);
        rx
    }

    /// How long `run` keeps answering in-flight requests after `shutdown`
    /// completes. Default 5 s.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Runs until `shutdown` completes, spawning one task per request that
    /// calls `handler`. Returns an error only if the transport fails for
    /// good (transient receive errors such as ICMP reports are logged).
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let handler = Arc::new(handler);
        let dispatch = move |request: IncomingRequestHandle| {
            let handler = Arc::clone(&handler);
            tokio::spawn(async move { handler.handle(request).await });
            Ok(())
        };
        self.drive(dispatch, shutdown).await
    }

    /// Runs until `shutdown` completes, delivering requests on `requests`.
    /// When the channel is full a request is answered 5.03 at once.
    pub async fn run_with_channel(
        self,
        requests: mpsc::Sender<IncomingRequestHandle>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let dispatch = move |request: IncomingRequestHandle| {
            requests.try_send(request).map_err(|error| match error {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => {
                    Box::new(r)
                }
            })
        };
        self.drive(dispatch, shutdown).await
    }

    async fn drive<D>(
        mut self,
        mut dispatch: D,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        D: FnMut(IncomingRequestHandle) -> Result<(), Box<IncomingRequestHandle>>,
    {
        let mut buf = vec![0u8; RECEIVE_BUFFER];
        let mut waiting: HashMap<ClientRequestId, oneshot::Sender<Result<Message, ServerError>>> =
            HashMap::new();
        tokio::pin!(shutdown);
        let mut stopping: Option<tokio::time::Instant> = None;
        let mut fatal: Option<io::Error> = None;
        loop {
            self.flush(&mut dispatch, &mut waiting, stopping.is_some())
                .await;
            if stopping.is_some() && self.endpoint.pending_requests() == 0 {
                break;
            }
            let deadline = self
                .endpoint
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let grace = async {
                match stopping {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown, if stopping.is_none() => {
                    stopping = Some(tokio::time::Instant::now() + self.shutdown_grace);
                }
                () = grace => break,
                received = self.transport.recv(&mut buf) => match received {
                    Ok((n, peer)) => {
                        let datagram = buf.get(..n).unwrap_or(&[]);
                        self.endpoint.handle_datagram(Instant::now(), peer, datagram);
                    }
                    Err(error) if is_transient(&error) => {
                        // ICMP errors and the like surface here; keep serving.
                        tracing::debug!(%error, "receive error");
                    }
                    Err(error) => {
                        // The transport is gone (e.g. the DTLS driver stopped):
                        // send what is pending and report it.
                        tracing::warn!(%error, "transport failed; endpoint stops");
                        fatal = Some(error);
                        break;
                    }
                },
                Some(command) = self.commands_rx.recv() => {
                    self.apply(command, &mut waiting);
                }
                () = timer => self.endpoint.handle_timeout(Instant::now()),
            }
        }
        self.flush(&mut dispatch, &mut waiting, true).await;
        match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn apply(
        &mut self,
        command: Command,
        waiting: &mut HashMap<ClientRequestId, oneshot::Sender<Result<Message, ServerError>>>,
    ) {
        let now = Instant::now();
        match command {
            Command::Respond {
                id,
                response,
                reply,
            } => {
                let result = self.endpoint.respond(now, id, response);
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::SetAckTimeout { id, timeout } => {
                let _ = self.endpoint.set_ack_timeout(now, id, timeout);
            }
            Command::Notify {
                relation,
                notification,
                confirmable,
                reply,
            } => {
                let _ = reply.send(
                    self.endpoint
                        .notify(now, relation, notification, confirmable),
                );
            }
            Command::Request {
                peer,
                request,
                confirmable,
                reply,
            } => match self.endpoint.send_request(now, peer, request, confirmable) {
                Ok(id) => {
                    waiting.insert(id, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(ServerError::Send(error)));
                }
            },
            Command::Rebind { old, new, reply } => {
                let _ = reply.send(self.endpoint.rebind(now, &old, new));
            }
            Command::CancelObserve { relation } => {
                self.endpoint.cancel_observe(relation);
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.endpoint.stats());
            }
        }
    }

    /// Sends what the endpoint wants sent and hands out its events.
    async fn flush<D>(
        &mut self,
        dispatch: &mut D,
        waiting: &mut HashMap<ClientRequestId, oneshot::Sender<Result<Message, ServerError>>>,
        stopping: bool,
    ) where
        D: FnMut(IncomingRequestHandle) -> Result<(), Box<IncomingRequestHandle>>,
    {
        loop {
            while let Some(event) = self.endpoint.poll_event() {
                self.on_event(event, dispatch, waiting, stopping);
            }
            let Some(transmit) = self.endpoint.poll_transmit() else {
                break;
            };
            if let Err(error) = self.transport.send(&transmit.peer, &transmit.bytes).await {
                tracing::debug!(%error, peer = %transmit.peer, "send error");
            }
        }
    }

    fn on_event<D>(
        &mut self,
        event: Event,
        dispatch: &mut D,
        waiting: &mut HashMap<ClientRequestId, oneshot::Sender<Result<Message, ServerError>>>,
        stopping: bool,
    ) where
        D: FnMut(IncomingRequestHandle) -> Result<(), Box<IncomingRequestHandle>>,
    {
        let now = Instant::now();
        match event {
            Event::Request(request) => {
                let id = request.id;
                if stopping {
                    let _ = self.endpoint.respond(now, id, unavailable());
                    return;
                }
                let handle = IncomingRequestHandle {
                    peer: request.peer,
                    message: request.message,
                    observe_registration: request.observe_registration,
                    responder: Responder {
                        id,
                        commands: self.commands_tx.clone(),
                        answered: false,
                    },
                };
                if let Err(mut refused) = dispatch(handle) {
                    refused.responder.answered = true;
                    let _ = self.endpoint.respond(now, id, unavailable());
                }
            }
            Event::Response {
                request, response, ..
            } => {
                if let Some(reply) = waiting.remove(&request) {
                    let _ = reply.send(Ok(response));
                    // An observe request sent through the handle gets its
                    // first response only.
                    self.endpoint.cancel_request(request);
                }
            }
            Event::RequestFailed { request, reason } => {
                if let Some(reply) = waiting.remove(&request) {
                    let _ = reply.send(Err(ServerError::Request(reason)));
                }
            }
            Event::ObserveCancelled {
                relation,
                peer,
                reason,
            } => {
                if let Some(events) = &self.events_tx {
                    let _ = events.try_send(ServerEvent::ObserveCancelled {
                        relation,
                        peer,
                        reason,
                    });
                }
            }
        }
    }
}

/// Receive errors after which the socket still works: ICMP reports
/// surfacing on a UDP socket, interruptions.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

fn unavailable() -> Message {
    response(Code::SERVICE_UNAVAILABLE).with_uint_option(OptionNumber::MAX_AGE, 5)
}
