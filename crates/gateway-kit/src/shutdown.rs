//! Graceful shutdown: a signal every task can await, and draining with a deadline.
//!
//! ```text
//!  SIGINT/SIGTERM ──▶ Shutdown::trigger ──▶ every clone's `triggered()` resolves
//!                                           │ listeners stop accepting
//!                                           ▼
//!  in-flight work holds InFlightGuard ──▶ InFlight::drain(deadline) ──▶ Drained | TimedOut
//! ```

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Why shutdown began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownReason {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (service manager, container runtime).
    Terminate,
    /// [`Shutdown::trigger`] was called by the program.
    Requested,
}

impl std::fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShutdownReason::Interrupt => "SIGINT",
            ShutdownReason::Terminate => "SIGTERM",
            ShutdownReason::Requested => "request",
        })
    }
}

/// A one-shot, cloneable shutdown signal.
///
/// Every clone observes the same signal; the first [`trigger`](Self::trigger)
/// wins and later ones are ignored. Awaiting [`triggered`](Self::triggered)
/// after the fact returns at once.
#[derive(Clone, Debug)]
pub struct Shutdown {
    sender: Arc<watch::Sender<Option<ShutdownReason>>>,
    receiver: watch::Receiver<Option<ShutdownReason>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        let (sender, receiver) = watch::channel(None);
        Shutdown {
            sender: Arc::new(sender),
            receiver,
        }
    }

    /// Fires the signal (no effect if it already fired).
    pub fn trigger(&self, reason: ShutdownReason) {
        self.sender.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.receiver.borrow().is_some()
    }

    /// Why the signal fired, if it has.
    pub fn reason(&self) -> Option<ShutdownReason> {
        *self.receiver.borrow()
    }

    /// Resolves once the signal has fired (at once if it already has).
    pub async fn triggered(&self) -> ShutdownReason {
        let mut receiver = self.receiver.clone();
        match receiver.wait_for(Option::is_some).await {
            Ok(reason) => reason.unwrap_or(ShutdownReason::Requested),
            // The sender lives in `self`, so it cannot be gone while we wait.
            Err(_) => ShutdownReason::Requested,
        }
    }

    /// An owned future for APIs that need `'static` (e.g. `with_graceful_shutdown`).
    pub fn triggered_owned(
        &self,
    ) -> impl std::future::Future<Output = ShutdownReason> + Send + 'static {
        let this = self.clone();
        async move { this.triggered().await }
    }

    /// Fires this signal on SIGINT or SIGTERM. Must be called inside a tokio
    /// runtime; the handlers are installed before it returns, so a signal
    /// right after cannot be missed.
    ///
    /// A *second* SIGINT/SIGTERM ends the process at once with exit code 130
    /// (SIGINT) or 143 (SIGTERM): the usual "press Ctrl-C twice" escape when
    /// draining takes too long.
    pub fn listen_for_signals(&self) -> io::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut interrupt = signal(SignalKind::interrupt())?;
            let mut terminate = signal(SignalKind::terminate())?;
            let shutdown = self.clone();
            tokio::spawn(async move {
                let mut seen = 0u32;
                loop {
                    let reason = tokio::select! {
                        Some(()) = interrupt.recv() => ShutdownReason::Interrupt,
                        Some(()) = terminate.recv() => ShutdownReason::Terminate,
                        else => return,
                    };
                    seen += 1;
                    if seen > 1 {
                        tracing::warn!(%reason, "second signal, exiting without draining");
                        // 128 + signal number, as a shell reports a signal death.
                        std::process::exit(match reason {
                            ShutdownReason::Terminate => 143,
                            _ => 130,
                        });
                    }
                    tracing::info!(%reason, "shutting down");
                    shutdown.trigger(reason);
                }
            });
        }
        #[cfg(not(unix))]
        {
            let shutdown = self.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::info!("shutting down on Ctrl-C");
                    shutdown.trigger(ShutdownReason::Interrupt);
                }
            });
        }
        Ok(())
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainOutcome {
    /// Everything finished before the deadline.
    Drained,
    /// The deadline passed with work still running.
    TimedOut {
        /// How many pieces of work were still running.
        still_running: usize,
    },
}

/// Counts in-flight work (requests awaiting a broker confirm, open
/// exchanges) so shutdown can wait for it.
///
/// Each piece of work holds an [`InFlightGuard`] from [`enter`](Self::enter);
/// dropping the guard ends it.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    inner: Arc<InFlightInner>,
}

#[derive(Debug, Default)]
struct InFlightInner {
    count: AtomicUsize,
    idle: Notify,
}

/// Marks one piece of in-flight work until dropped.
#[derive(Debug)]
#[must_use = "the work counts as in flight only while the guard is alive"]
pub struct InFlightGuard {
    inner: Arc<InFlightInner>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.inner.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl InFlight {
    /// A tracker with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts one piece of work.
    pub fn enter(&self) -> InFlightGuard {
        self.inner.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard {
            inner: Arc::clone(&self.inner),
        }
    }

    /// How much work is in flight now.
    pub fn count(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }

    /// Waits until nothing is in flight or `deadline` has passed.
    pub async fn drain(&self, deadline: Duration) -> DrainOutcome {
        let idle = async {
            loop {
                let notified = self.inner.idle.notified();
                tokio::pin!(notified);
                // Register interest before checking, so a guard dropped in
                // between cannot be missed.
                notified.as_mut().enable();
                if self.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(deadline, idle).await {
            Ok(()) => DrainOutcome::Drained,
            Err(_) => DrainOutcome::TimedOut {
                still_running: self.count(),
            },
        }
    }
}

/// Waits for every task in `tasks` to finish, at most `deadline`; tasks
/// still running then are aborted. Task results (and panics) are discarded:
/// this is for the end of the program.
pub async fn join_all_within<T: 'static>(
    tasks: &mut JoinSet<T>,
    deadline: Duration,
) -> DrainOutcome {
    let all = async { while tasks.join_next().await.is_some() {} };
    let finished = tokio::time::timeout(deadline, all).await.is_ok();
    if finished {
        DrainOutcome::Drained
    } else {
        let still_running = tasks.len();
        tasks.abort_all();
        DrainOutcome::TimedOut { still_running }
    }
}
