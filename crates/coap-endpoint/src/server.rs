//! The tokio driver: one task owns the [`Endpoint`] and the [`Transport`];
//! application handlers talk to it through channels, so a handler waiting
//! for something never holds up the endpoint. By default the driver task
//! polls the handler futures itself ([`HandlerExecution::Inline`]: no spawn
//! and no cross-thread wake-up per request); with
//! [`HandlerExecution::Spawned`] each request gets a task of its own.
//!
//! Each wakeup takes every datagram already queued on the socket (up to 32,
//! one `recvmmsg` on Linux, see [`Transport::recv_batch`]) and the answers
//! leave together ([`Transport::send_batch`], one `sendmmsg`).
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
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use coap_codec::{Code, Message, MessageType, OptionNumber};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use crate::batch::RecvBatch;
use crate::config::{AckTimeout, ConfigError, EndpointConfig};
use crate::endpoint::Endpoint;
use crate::peer::Peer;
use crate::stats::Stats;
use crate::transport::{Transport, UdpTransport};
use crate::types::{
    CancelReason, ClientRequestId, Event, NotifyError, RelationId, RequestFailure, RequestId,
    RespondError, SendRequestError, Transmit,
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

/// Handles requests (one future per request).
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

/// Most datagrams the driver takes from the transport per wakeup (one
/// `recvmmsg` on Linux); their answers leave in one `sendmmsg`.
const RECEIVE_BATCH: usize = 32;
/// Most queued commands (answers from handler tasks…) applied per wakeup
/// before the driver looks at the socket again.
const COMMAND_BATCH: usize = 64;
/// Capacity of the event channel; events beyond it are dropped.
const EVENT_QUEUE: usize = 1024;

/// A handler's future, boxed (see `Server::run`).
type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What became of a request handed to the application.
enum Dispatched {
    /// Taken (spawned, or queued on the request channel).
    Done,
    /// To be polled by the driver task itself.
    Inline(HandlerFuture),
    /// Not taken (channel full or closed): answer 5.03.
    Refused(Box<IncomingRequestHandle>),
}

/// How [`Server::run`] runs the handler of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HandlerExecution {
    /// The driver task polls the handler futures itself, beside the
    /// socket (no task spawn, no wake-up of another worker thread per
    /// request: measured 0.6 context switches and ~4k instructions per
    /// request less on the EMQX gateway). Handlers must not block the
    /// thread (they never may on tokio); CPU-heavy work belongs in
    /// `spawn_blocking` or a task of its own.
    #[default]
    Inline,
    /// One tokio task per request: handler CPU spreads over the runtime's
    /// worker threads, at the price of a spawn and cross-thread wake-ups
    /// per request.
    Spawned,
}

/// An endpoint bound to a transport, ready to [`run`](Self::run).
pub struct Server<T: Transport> {
    transport: T,
    endpoint: Endpoint,
    commands_tx: mpsc::UnboundedSender<Command>,
    commands_rx: mpsc::UnboundedReceiver<Command>,
    events_tx: Option<mpsc::Sender<ServerEvent>>,
    shutdown_grace: Duration,
    handler_execution: HandlerExecution,
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
            handler_execution: HandlerExecution::default(),
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

    /// How `run` runs handlers: polled by the driver task (default) or one
    /// task per request.
    pub fn with_handler_execution(mut self, execution: HandlerExecution) -> Self {
        self.handler_execution = execution;
        self
    }

    /// How long `run` keeps answering in-flight requests after `shutdown`
    /// completes. Default 5 s.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Runs until `shutdown` completes, calling `handler` for every request
    /// (polled by the driver task, or in a task per request: see
    /// [`with_handler_execution`](Self::with_handler_execution)). Returns an error only if the transport fails for
    /// good (transient receive errors such as ICMP reports are logged).
    pub async fn run<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let handler = Arc::new(handler);
        let inline = self.handler_execution == HandlerExecution::Inline;
        let dispatch = move |request: IncomingRequestHandle| {
            let handler = Arc::clone(&handler);
            // Boxed: handler futures can be kilobytes (the EMQX gateway's
            // is), and tokio moves a spawned future by value into the task
            // cell and again when the task finishes; a box is moved instead
            // (measured: ~3.3k of ~28k instructions per request were those
            // copies).
            let future: HandlerFuture = Box::pin(async move { handler.handle(request).await });
            if inline {
                Dispatched::Inline(future)
            } else {
                tokio::spawn(future);
                Dispatched::Done
            }
        };
        if inline {
            // Inline handlers talk to the driver through channels while the
            // driver itself polls them: without the guard every answer
            // would wake the running driver task, which tokio treats as a
            // yield and answers by waking another worker thread to steal
            // it (measured at one request in flight: 3 context switches
            // and 2× the CPU per request).
            SelfWakeGuard::new(self.drive(dispatch, shutdown)).await
        } else {
            self.drive(dispatch, shutdown).await
        }
    }

    /// Runs until `shutdown` completes, delivering requests on `requests`.
    /// When the channel is full a request is answered 5.03 at once.
    pub async fn run_with_channel(
        self,
        requests: mpsc::Sender<IncomingRequestHandle>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let dispatch = move |request: IncomingRequestHandle| match requests.try_send(request) {
            Ok(()) => Dispatched::Done,
            Err(mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) => {
                Dispatched::Refused(Box::new(r))
            }
        };
        self.drive(dispatch, shutdown).await
    }

    async fn drive<D>(
        mut self,
        mut dispatch: D,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        D: FnMut(IncomingRequestHandle) -> Dispatched,
    {
        let mut handlers: FuturesUnordered<HandlerFuture> = FuturesUnordered::new();
        let mut batch = RecvBatch::new(RECEIVE_BATCH);
        let mut transmits: Vec<Transmit> = Vec::with_capacity(RECEIVE_BATCH);
        let mut waiting: HashMap<ClientRequestId, oneshot::Sender<Result<Message, ServerError>>> =
            HashMap::new();
        tokio::pin!(shutdown);
        let mut stopping: Option<tokio::time::Instant> = None;
        let mut fatal: Option<io::Error> = None;
        // One timer for the whole run, moved only when the endpoint's next
        // deadline changes (a fresh `sleep_until` per wakeup registers and
        // deregisters a timer entry every time).
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            self.flush(
                &mut dispatch,
                &mut handlers,
                &mut waiting,
                stopping.is_some(),
                &mut transmits,
            )
            .await;
            if !handlers.is_empty() {
                // Run the inline handlers as far as they go now (new ones
                // send their answers at once), so that those answers leave
                // in this wakeup instead of after the next batch.
                std::future::poll_fn(|cx| {
                    while let Poll::Ready(Some(())) = handlers.poll_next_unpin(cx) {}
                    Poll::Ready(())
                })
                .await;
                if self.apply_queued(&mut waiting) > 0 {
                    self.flush(
                        &mut dispatch,
                        &mut handlers,
                        &mut waiting,
                        stopping.is_some(),
                        &mut transmits,
                    )
                    .await;
                }
            }
            if stopping.is_some() && self.endpoint.pending_requests() == 0 {
                break;
            }
            let deadline = self.endpoint.poll_timeout();
            if deadline != armed {
                if let Some(at) = deadline {
                    timer.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                armed = deadline;
            }
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
                received = self.transport.recv_batch(&mut batch) => match received {
                    Ok(()) => {
                        let now = Instant::now();
                        let endpoint = &mut self.endpoint;
                        batch.drain_with(|peer, datagram| {
                            endpoint.handle_datagram(now, peer, datagram);
                        });
                        // Answers that handler tasks finished meanwhile go
                        // out in the same flush.
                        self.apply_queued(&mut waiting);
                    }
                    Err(error) if is_transient(&error) => {
                        // ICMP errors and the like surface here; keep serving.
                        batch.clear();
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
                    self.apply_queued(&mut waiting);
                }
                // Inline handlers: their answers arrive as commands.
                Some(()) = handlers.next(), if !handlers.is_empty() => {
                    self.apply_queued(&mut waiting);
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.endpoint.handle_timeout(Instant::now());
                }
            }
        }
        self.flush(
            &mut dispatch,
            &mut handlers,
            &mut waiting,
            true,
            &mut transmits,
        )
        .await;
        match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Applies the commands already queued, up to one batch's worth (so
    /// that a flood of commands cannot starve the socket).
    fn apply_queued(
        &mut self,
        waiting: &mut HashMap<ClientRequestId, oneshot::Sender<Result<Message, ServerError>>>,
    ) -> usize {
        let mut applied = 0;
        while applied < COMMAND_BATCH {
            match self.commands_rx.try_recv() {
                Ok(command) => self.apply(command, waiting),
                Err(_) => break,
            }
            applied += 1;
        }
        applied
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

    /// Sends what the endpoint wants sent (in one batch) and hands out its
    /// events.
    async fn flush<D>(
        &mut self,
        dispatch: &mut D,
        handlers: &mut FuturesUnordered<HandlerFuture>,
        waiting: &mut HashMap<ClientRequestId, oneshot::Sender<Result<Message, ServerError>>>,
        stopping: bool,
        transmits: &mut Vec<Transmit>,
    ) where
        D: FnMut(IncomingRequestHandle) -> Dispatched,
    {
        loop {
            while let Some(event) = self.endpoint.poll_event() {
                self.on_event(event, dispatch, handlers, waiting, stopping);
            }
            transmits.extend(std::iter::from_fn(|| self.endpoint.poll_transmit()));
            if transmits.is_empty() {
                break;
            }
            self.transport.send_batch(transmits).await;
            transmits.clear();
        }
    }

    fn on_event<D>(
        &mut self,
        event: Event,
        dispatch: &mut D,
        handlers: &mut FuturesUnordered<HandlerFuture>,
        waiting: &mut HashMap<ClientRequestId, oneshot::Sender<Result<Message, ServerError>>>,
        stopping: bool,
    ) where
        D: FnMut(IncomingRequestHandle) -> Dispatched,
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
                match dispatch(handle) {
                    Dispatched::Done => {}
                    Dispatched::Inline(future) => handlers.push(future),
                    Dispatched::Refused(mut refused) => {
                        refused.responder.answered = true;
                        let _ = self.endpoint.respond(now, id, unavailable());
                    }
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

/// Polls a future so that wakes it causes to itself (while it is being
/// polled) re-poll it at once instead of rescheduling the task; wakes from
/// anywhere else go to the task as usual.
///
/// States: `IDLE` (not being polled: a wake goes to the task's waker),
/// `POLLING`, `POLLING_WOKEN` (woken during the poll: poll again).
struct SelfWakeGuard<F> {
    inner: Pin<Box<F>>,
    shared: Arc<GuardShared>,
    waker: std::task::Waker,
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const POLLING_WOKEN: u8 = 2;
/// Re-polls per task poll before giving the runtime its turn (a driver
/// that keeps waking itself must not starve other tasks).
const MAX_REPOLLS: usize = 16;

struct GuardShared {
    state: std::sync::atomic::AtomicU8,
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for GuardShared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            match state {
                POLLING => match self.state.compare_exchange_weak(
                    POLLING,
                    POLLING_WOKEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return,
                    Err(actual) => state = actual,
                },
                POLLING_WOKEN => return,
                _ => break,
            }
        }
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<F: Future> SelfWakeGuard<F> {
    fn new(inner: F) -> Self {
        let shared = Arc::new(GuardShared {
            state: std::sync::atomic::AtomicU8::new(IDLE),
            task: std::sync::Mutex::new(None),
        });
        let waker = std::task::Waker::from(Arc::clone(&shared));
        SelfWakeGuard {
            inner: Box::pin(inner),
            shared,
            waker,
        }
    }
}

impl<F: Future> Future for SelfWakeGuard<F> {
    type Output = F::Output;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::sync::atomic::Ordering;
        let this = self.get_mut();
        {
            let mut task = this
                .shared
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner_cx = std::task::Context::from_waker(&this.waker);
        for _ in 0..MAX_REPOLLS {
            this.shared.state.store(POLLING, Ordering::Release);
            if let std::task::Poll::Ready(output) = this.inner.as_mut().poll(&mut inner_cx) {
                this.shared.state.store(IDLE, Ordering::Release);
                return std::task::Poll::Ready(output);
            }
            if this
                .shared
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return std::task::Poll::Pending;
            }
            // Woken during the poll: go again.
        }
        this.shared.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::net::SocketAddr;

    async fn echo(request: IncomingRequestHandle) {
        let reply = response(Code::CONTENT).with_payload(request.message.payload.clone());
        let _ = request.responder.respond(reply).await;
    }

    /// A burst of 200 NON requests sent at once (several receive batches)
    /// gets exactly one answer per request, each with its request's token
    /// (and payload when echoed), in both handler modes.
    async fn burst(execution: HandlerExecution) {
        let server = Server::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            EndpointConfig::default(),
        )
        .await
        .unwrap()
        .with_handler_execution(execution);
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(echo, async move {
            let _ = stopped.await;
        }));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        for i in 0..200u16 {
            let request = Message::new(MessageType::Non, Code::POST, i)
                .with_token(i.to_be_bytes().to_vec())
                .with_payload(format!("p{i}").into_bytes());
            client.send(&request.to_bytes().unwrap()).await.unwrap();
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut echoed = 0;
        let mut buf = vec![0u8; 2048];
        while seen.len() < 200 {
            let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
                .await
                .expect("all answers within 10 s")
                .unwrap();
            let answer = Message::from_bytes(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
            let token: [u8; 2] = answer.token.as_ref().try_into().unwrap();
            let i = u16::from_be_bytes(token);
            // The endpoint may shed part of a burst with 5.03 (its per-peer
            // pending-request cap); everything else is the echo.
            if answer.code == Code::CONTENT {
                assert_eq!(&answer.payload[..], format!("p{i}").as_bytes());
                echoed += 1;
            } else {
                assert_eq!(answer.code, Code::SERVICE_UNAVAILABLE);
            }
            assert!(seen.insert(i), "request {i} answered twice");
        }
        assert!(echoed > 0);
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_is_answered_completely_by_inline_handlers() {
        burst(HandlerExecution::Inline).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_is_answered_completely_by_spawned_handlers() {
        burst(HandlerExecution::Spawned).await;
    }
}
