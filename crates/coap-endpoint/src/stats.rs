//! Counters of the message layer.

use coap_codec::Code;

/// Requests received, by method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MethodCounts {
    /// GET.
    pub get: u64,
    /// POST.
    pub post: u64,
    /// PUT.
    pub put: u64,
    /// DELETE.
    pub delete: u64,
    /// FETCH, PATCH, iPATCH.
    pub fetch_patch: u64,
    /// Unknown methods (answered 4.05).
    pub other: u64,
}

/// Malformed input, by the reaction it got (the spec's malformed-input table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MalformedCounts {
    /// Answered with RST (format errors in a CON, empty message with content).
    pub reset: u64,
    /// Silently dropped (bad version, too short, format errors in NON/ACK/RST).
    pub dropped: u64,
    /// Answered 4.02 Bad Option.
    pub bad_option: u64,
    /// Answered 4.00 Bad Request.
    pub bad_request: u64,
    /// Answered 4.05 Method Not Allowed.
    pub method_not_allowed: u64,
    /// Responses with an unknown code, ignored.
    pub unknown_response: u64,
}

/// A snapshot of the endpoint's counters ([`Endpoint::stats`](crate::Endpoint::stats)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_in: u64,
    /// Datagrams produced by `poll_transmit`.
    pub datagrams_out: u64,
    /// Requests received (after deduplication), by method.
    pub requests_in: MethodCounts,
    /// Responses sent (piggybacked, separate, NON, notifications, error
    /// answers), by code; only codes with a non-zero count, ascending.
    pub responses_out: Vec<(Code, u64)>,
    /// Confirmable messages retransmitted.
    pub retransmissions: u64,
    /// Confirmable messages given up after MAX_RETRANSMIT.
    pub give_ups: u64,
    /// Duplicate CONs answered from the deduplication cache.
    pub dedup_con_hits: u64,
    /// Duplicate NONs dropped.
    pub dedup_non_hits: u64,
    /// Deduplication entries evicted before their lifetime because of the caps.
    pub dedup_evictions: u64,
    /// Deduplication entries held now.
    pub dedup_entries: u64,
    /// Queued notifications dropped because a peer's queue was full.
    pub queue_drops: u64,
    /// Requests refused with 5.03 because of the pending-request caps.
    pub overload_rejections: u64,
    /// CoAP pings (empty CON) answered with RST.
    pub pings: u64,
    /// Observe relations now.
    pub observers: u64,
    /// Observe relations established.
    pub relations_established: u64,
    /// Observe relations ended (any reason).
    pub relations_cancelled: u64,
    /// Notifications sent (first transmissions).
    pub notifications: u64,
    /// Block1 transfers completed.
    pub block1_transfers: u64,
    /// Block2 follow-ups served from the cache.
    pub block2_cache_hits: u64,
    /// Block2 follow-ups of a non-GET/FETCH request whose body was no
    /// longer cached, answered 4.08 instead of running the request again.
    pub block2_cache_misses: u64,
    /// Block2 cache entries evicted by the caps.
    pub block_cache_evictions: u64,
    /// Block1 transfers refused (4.08, 4.13, memory cap).
    pub block1_rejections: u64,
    /// Block1 transfers in reassembly evicted to make room for others
    /// (per-peer or global cap; expiry not counted). Their next block gets
    /// 4.08.
    pub block1_evictions: u64,
    /// Malformed input by reaction.
    pub malformed: MalformedCounts,
}

/// The live counters; `responses_out` as a flat array indexed by code.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    pub(crate) stats: Stats,
    pub(crate) responses_out: [u64; 256],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            stats: Stats::default(),
            responses_out: [0; 256],
        }
    }
}

impl Counters {
    pub(crate) fn request_in(&mut self, code: Code) {
        let m = &mut self.stats.requests_in;
        match code {
            Code::GET => m.get += 1,
            Code::POST => m.post += 1,
            Code::PUT => m.put += 1,
            Code::DELETE => m.delete += 1,
            Code::FETCH | Code::PATCH | Code::IPATCH => m.fetch_patch += 1,
            _ => m.other += 1,
        }
    }

    pub(crate) fn response_out(&mut self, code: Code) {
        if let Some(slot) = self.responses_out.get_mut(usize::from(code.to_u8())) {
            *slot += 1;
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.responses_out = self
            .responses_out
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| (Code::from_u8(code as u8), *n))
            .collect();
        stats
    }
}
