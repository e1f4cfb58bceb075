//! Readiness checks behind `/readyz`: named conditions that must all hold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::shutdown::Shutdown;

/// A shared list of named readiness checks; cheap to clone.
///
/// Components register a [`ReadyFlag`] they flip (`"udp listener"` once
/// bound, `"broker"` while connected) or a closure that is asked on every
/// `/readyz`. With no checks registered the process counts as ready.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<Check>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("not_ready", &self.not_ready())
            .finish()
    }
}

#[derive(Clone)]
struct Check {
    name: String,
    probe: Probe,
}

#[derive(Clone)]
enum Probe {
    Flag(Arc<AtomicBool>),
    Function(Arc<dyn Fn() -> bool + Send + Sync>),
}

/// A readiness condition a component sets; starts *not ready*.
#[derive(Clone, Debug)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    /// Marks the condition as holding (`true`) or not (`false`).
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the condition holds.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Readiness {
    /// No checks (ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a condition named `name`, initially not ready.
    pub fn flag(&self, name: &str) -> ReadyFlag {
        let flag = Arc::new(AtomicBool::new(false));
        self.push(name, Probe::Flag(Arc::clone(&flag)));
        ReadyFlag(flag)
    }

    /// Registers a condition computed on demand (keep it cheap and non-blocking).
    pub fn check(&self, name: &str, probe: impl Fn() -> bool + Send + Sync + 'static) {
        self.push(name, Probe::Function(Arc::new(probe)));
    }

    /// Registers the condition `"shutting down"`, which fails once `shutdown`
    /// has fired, so load balancers stop sending work while the process drains.
    pub fn fail_after(&self, shutdown: &Shutdown) {
        let shutdown = shutdown.clone();
        self.check("shutting down", move || !shutdown.is_triggered());
    }

    /// Names of the conditions that do not hold now, in registration order.
    pub fn not_ready(&self) -> Vec<String> {
        // Probes run outside the lock so a probe can never block registration.
        let checks: Vec<Check> = self.lock().clone();
        checks
            .into_iter()
            .filter(|check| match &check.probe {
                Probe::Flag(flag) => !flag.load(Ordering::Acquire),
                Probe::Function(probe) => !probe(),
            })
            .map(|check| check.name)
            .collect()
    }

    /// Whether every condition holds.
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_empty()
    }

    fn push(&self, name: &str, probe: Probe) {
        self.lock().push(Check {
            name: name.to_owned(),
            probe,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Check>> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_functions() {
        let readiness = Readiness::new();
        assert!(readiness.is_ready());
        let udp = readiness.flag("udp listener");
        let broker_up = Arc::new(AtomicBool::new(false));
        let probe = Arc::clone(&broker_up);
        readiness.check("broker", move || probe.load(Ordering::Relaxed));
        assert_eq!(readiness.not_ready(), ["udp listener", "broker"]);
        udp.set_ready(true);
        assert_eq!(readiness.not_ready(), ["broker"]);
        broker_up.store(true, Ordering::Relaxed);
        assert!(readiness.is_ready());
        udp.set_ready(false);
        assert!(!readiness.is_ready());
    }
}
