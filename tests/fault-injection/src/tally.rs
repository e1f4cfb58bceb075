//! Counting what a fault did to a message stream: sent, acknowledged,
//! refused, delivered, duplicated, lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Thread-safe counters keyed by message payload (each payload unique).
#[derive(Debug, Default)]
pub struct Tally {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sent: u64,
    acknowledged: Vec<String>,
    codes: BTreeMap<String, u64>,
    delivered: HashMap<String, u64>,
}

/// A snapshot of a [`Tally`].
#[derive(Debug, Clone)]
pub struct Figures {
    /// Requests sent (each payload once, retransmissions not counted).
    pub sent: u64,
    /// Requests answered with success (2.04).
    pub acknowledged: u64,
    /// Final response codes (`none` = no answer), counted.
    pub codes: BTreeMap<String, u64>,
    /// Distinct payloads seen at the broker.
    pub delivered: u64,
    /// Extra copies seen at the broker.
    pub duplicated: u64,
    /// Acknowledged payloads never seen at the broker.
    pub lost: Vec<String>,
    /// Delivered payloads that were not acknowledged (refused or timed out
    /// at the client, but the broker had them: allowed, at-least-once).
    pub unacknowledged_delivered: u64,
}

impl Tally {
    /// A request with a new payload was sent.
    pub fn sent(&self) {
        self.inner.lock().unwrap().sent += 1;
    }

    /// The final answer to a request (`"2.04"`, `"5.03"`, `"none"`, ...);
    /// a success code marks `payload` acknowledged.
    pub fn answered(&self, payload: &str, code: &str, success: bool) {
        let mut inner = self.inner.lock().unwrap();
        *inner.codes.entry(code.to_owned()).or_default() += 1;
        if success {
            inner.acknowledged.push(payload.to_owned());
        }
    }

    /// The broker (or its consumer) saw `payload`.
    pub fn delivered(&self, payload: &str) {
        *self
            .inner
            .lock()
            .unwrap()
            .delivered
            .entry(payload.to_owned())
            .or_default() += 1;
    }

    /// Current figures.
    pub fn figures(&self) -> Figures {
        let inner = self.inner.lock().unwrap();
        let lost: Vec<String> = inner
            .acknowledged
            .iter()
            .filter(|p| !inner.delivered.contains_key(*p))
            .cloned()
            .collect();
        let acked: std::collections::HashSet<&String> = inner.acknowledged.iter().collect();
        Figures {
            sent: inner.sent,
            acknowledged: inner.acknowledged.len() as u64,
            codes: inner.codes.clone(),
            delivered: inner.delivered.len() as u64,
            duplicated: inner.delivered.values().map(|n| n - 1).sum(),
            lost,
            unacknowledged_delivered: inner
                .delivered
                .keys()
                .filter(|p| !acked.contains(p))
                .count() as u64,
        }
    }
}

impl Figures {
    /// One summary line.
    pub fn line(&self) -> String {
        format!(
            "sent={} acknowledged={} delivered={} duplicated={} lost={} delivered_unacknowledged={} codes={:?}",
            self.sent,
            self.acknowledged,
            self.delivered,
            self.duplicated,
            self.lost.len(),
            self.unacknowledged_delivered,
            self.codes
        )
    }
}
