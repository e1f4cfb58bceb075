//! Fuzzes the DTLS record layer of `coap-dtls` beyond the ClientHello:
//! arbitrary datagrams parsed as record sequences, and a compact
//! established session (the server's own AEAD record protection,
//! `compact.rs`, with its anti-replay window, `replay.rs`) set up with
//! fixed keys for one of the six AEAD suites, fed an arbitrary mix of raw
//! datagrams and records sealed by a mirrored peer session (fresh,
//! replayed, tampered, from another epoch, several per datagram, with
//! sequence-number jumps).
//!
//! Properties:
//! - record parsing never panics and accounts for every byte (header +
//!   fragment), versions are DTLS, parsing stops on the first bad record;
//! - `receive` never panics, reports at most one outcome per record and
//!   never delivers data, a close_notify or an alert from a record that was
//!   not sealed with the peer's keys (raw bytes, tampered records);
//! - a record sealed by the peer is accepted exactly when a reference
//!   replay window says it is fresh, and then gives exactly what the
//!   session's rules say (data, close_notify, fatal alert, flight resend
//!   while resends last, unexpected record, record_overflow);
//!   a replayed or too-old record is `Replayed`; another epoch is
//!   `OtherEpoch`;
//! - the session's replay window agrees with the reference model on probes
//!   around its right edge after every step, and the window moves only
//!   after a record authenticated;
//! - a record the session seals round-trips through the mirrored session
//!   (server → peer direction), sequence numbers increase by one per seal
//!   and sealing fails only past 2^48 − 1 or beyond a u16 fragment;
//! - the bare `ReplayWindow` agrees with the reference model for arbitrary
//!   u64 sequence numbers.
#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use bytes::Bytes;
use coap_dtls::DropReason;
use coap_dtls::fuzzing::{
    FuzzKeys, FuzzProtection, FuzzReceived, FuzzReplayWindow, FuzzSession, REPLAY_WINDOW,
};
use coap_dtls::record::{self, ClientHello, RECORD_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const MAX_SEQ: u64 = (1 << 48) - 1;
const MAX_PLAINTEXT: usize = 16_384;
const MAX_OPS: usize = 128;

#[derive(Arbitrary, Debug)]
struct Input {
    suite: u8,
    epoch: u16,
    max_resends: u8,
    server_seq: u64,
    raw_datagrams: Vec<Vec<u8>>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    Alert(u8, u8),
    /// A body of this exact length (up to 2^14 + 300: records near and over
    /// the plaintext limit).
    Len(u16, u8),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Bytes(b) => b.clone(),
            Body::Alert(level, description) => vec![*level, *description],
            Body::Len(len, fill) => vec![*fill; usize::from(*len) % (MAX_PLAINTEXT + 300)],
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes to the session.
    Raw(Vec<u8>),
    /// The peer seals records (content type, body) into one datagram.
    Peer(Vec<(u8, Body)>),
    /// The peer's next sequence number jumps (forwards or backwards).
    PeerSeq(u64),
    /// One of the peer's earlier datagrams again.
    Replay(u8),
    /// One of the peer's earlier datagrams with one byte changed.
    Tamper { which: u8, at: u16, xor: u8 },
    /// Several earlier datagrams glued together.
    Glue(Vec<u8>),
    /// A record from a peer in another epoch.
    OtherEpoch {
        delta: u16,
        content_type: u8,
        body: Body,
    },
    /// The session seals; the peer opens.
    Seal(u8, Body),
    /// The session's sequence number jumps.
    ServerSeq(u64),
    /// A close_notify from the session.
    CloseNotify,
    /// The bare replay window: mark / probe.
    Window { mark: bool, seq: u64 },
}

/// Reference anti-replay window: every accepted sequence number.
#[derive(Default)]
struct Model {
    seen: BTreeSet<u64>,
}

impl Model {
    fn highest(&self) -> Option<u64> {
        self.seen.last().copied()
    }

    fn is_fresh(&self, seq: u64) -> bool {
        match self.highest() {
            None => true,
            Some(h) if seq > h => true,
            Some(h) => h - seq < REPLAY_WINDOW && !self.seen.contains(&seq),
        }
    }

    fn mark(&mut self, seq: u64) {
        self.seen.insert(seq);
        // Keep the model small: only the window matters.
        if let Some(h) = self.highest() {
            let low = h.saturating_sub(REPLAY_WINDOW);
            while self.seen.first().is_some_and(|s| *s < low) {
                self.seen.pop_first();
            }
        }
    }
}

/// What the session must report for a fresh, authentic record of the
/// current epoch, and whether it ends the datagram.
fn expected(
    content_type: u8,
    plaintext: &[u8],
    flight: &mut Option<u32>,
    flight_len: usize,
) -> (Option<FuzzReceived>, bool, bool) {
    // (outcome, marks the window, stops the datagram)
    if plaintext.len() > MAX_PLAINTEXT {
        return (
            Some(FuzzReceived::Dropped(DropReason::Undecryptable)),
            false,
            false,
        );
    }
    match (content_type, plaintext) {
        (23, data) => {
            *flight = None;
            let out = (!data.is_empty()).then(|| FuzzReceived::Data(Bytes::copy_from_slice(data)));
            (out, true, false)
        }
        (21, [_, 0]) => (Some(FuzzReceived::CloseNotify), true, true),
        (21, [2, d]) => (Some(FuzzReceived::FatalAlert(*d)), true, true),
        (21, [1, _]) => (None, true, false),
        (22, _) => match flight {
            Some(left) if *left > 0 => {
                *left -= 1;
                (Some(FuzzReceived::ResendFlight(flight_len)), true, false)
            }
            _ => (
                Some(FuzzReceived::Dropped(DropReason::UnexpectedRecord)),
                true,
                false,
            ),
        },
        _ => (
            Some(FuzzReceived::Dropped(DropReason::UnexpectedRecord)),
            true,
            false,
        ),
    }
}

/// Parses a datagram as records; checks the byte accounting.
fn parse_all(datagram: &[u8]) -> usize {
    let mut rest = datagram;
    let mut count = 0;
    while !rest.is_empty() {
        match record::parse_record(rest) {
            Ok((tail, rec)) => {
                assert_eq!(
                    rest.len() - tail.len(),
                    RECORD_HEADER_LEN + rec.fragment.len(),
                    "record length accounting"
                );
                assert_eq!(rec.version >> 8, 0xfe, "non-DTLS version accepted");
                assert!((20..=25).contains(&rec.content_type));
                assert!(rec.sequence_number <= MAX_SEQ);
                assert!(tail.len() < rest.len());
                rest = tail;
                count += 1;
            }
            Err(_) => {
                count += 1;
                break;
            }
        }
    }
    count
}

const KEYS: FuzzKeys = FuzzKeys {
    client_write_key: [0x11; 32],
    server_write_key: [0x22; 32],
    client_write_iv: [0x33; 12],
    server_write_iv: [0x44; 12],
};

struct Harness {
    protection: FuzzProtection,
    server: FuzzSession,
    peer: FuzzSession,
    model: Model,
    /// The flight resends left, `None` once dropped.
    flight: Option<u32>,
    flight_len: usize,
    /// Datagrams the peer sent: bytes and the (seq, content type, body) of
    /// each record.
    sent: Vec<(Vec<u8>, Vec<(u64, u8, Vec<u8>)>)>,
    /// Highest sequence number the peer saw from the server.
    peer_model: Model,
}

impl Harness {
    /// Feeds a datagram of records with known contents; checks each outcome.
    fn deliver_known(&mut self, datagram: &[u8], records: &[(u64, u8, Vec<u8>)]) {
        let got = self.server.receive(&mut self.protection, datagram);
        let mut want = Vec::new();
        for (seq, ct, body) in records {
            if !(20..=25).contains(ct) {
                want.push(FuzzReceived::Dropped(DropReason::Malformed));
                break;
            }
            if !self.model.is_fresh(*seq) {
                want.push(FuzzReceived::Dropped(DropReason::Replayed));
                continue;
            }
            let (outcome, marks, stop) = expected(*ct, body, &mut self.flight, self.flight_len);
            if marks {
                self.model.mark(*seq);
            }
            want.extend(outcome);
            if stop {
                break;
            }
        }
        assert_eq!(got, want, "outcomes of peer records {records:?}");
        assert_eq!(self.server.keeps_last_flight(), self.flight.is_some());
    }

    fn check_window(&self, around: u64) {
        let mut probes = vec![around, around.wrapping_add(1), 0, MAX_SEQ];
        if let Some(h) = self.model.highest() {
            for d in [0, 1, 2, 31, 32, 63, 64, 65] {
                probes.push(h.saturating_sub(d));
                probes.push(h.saturating_add(d));
            }
        }
        for p in probes {
            assert_eq!(
                self.server.is_fresh(p),
                self.model.is_fresh(p),
                "replay window disagrees with the model at {p}"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    // 1. Arbitrary datagrams as record sequences and ClientHellos.
    for d in input.raw_datagrams.iter().take(16) {
        parse_all(d);
        let _ = ClientHello::parse_datagram(d);
    }

    let Some(protection) = FuzzProtection::new() else {
        return;
    };
    if !protection.supports(input.suite) {
        return;
    }
    let epoch = input.epoch.max(1);
    let flight: Vec<Bytes> = vec![Bytes::from_static(b"ccs"), Bytes::from_static(b"finished")];
    let max_resends = u32::from(input.max_resends % 4);
    let server_seq = input.server_seq % (MAX_SEQ + 3);
    let mut h = Harness {
        protection,
        server: FuzzSession::new(
            input.suite,
            &KEYS,
            epoch,
            server_seq,
            flight.clone(),
            max_resends,
            1200,
        ),
        peer: FuzzSession::new(input.suite, &KEYS.mirrored(), epoch, 0, Vec::new(), 0, 1200),
        model: Model::default(),
        flight: Some(max_resends),
        flight_len: flight.len(),
        sent: Vec::new(),
        peer_model: Model::default(),
    };

    let mut window = FuzzReplayWindow::default();
    let mut window_model = Model::default();

    for op in input.ops.into_iter().take(MAX_OPS) {
        let mut around = 0;
        match op {
            Op::Raw(bytes) => {
                let records = parse_all(&bytes);
                let highest = h.model.highest();
                let got = h.server.receive(&mut h.protection, &bytes);
                assert!(got.len() <= records.max(1), "more outcomes than records");
                for g in &got {
                    // Random bytes do not authenticate (a hit would need a
                    // forged 8-byte tag at least).
                    assert!(
                        matches!(g, FuzzReceived::Dropped(_)),
                        "raw bytes accepted: {g:?}"
                    );
                }
                assert_eq!(h.model.highest(), highest);
            }
            Op::Peer(records) => {
                let mut datagram = Vec::new();
                let mut known = Vec::new();
                for (ct, body) in records.into_iter().take(4) {
                    let body = body.bytes();
                    let seq = h.peer.next_write_seq();
                    match h.peer.seal(&mut h.protection, ct, &body) {
                        Ok(rec) => {
                            assert!(seq <= MAX_SEQ);
                            assert_eq!(
                                rec.len(),
                                RECORD_HEADER_LEN + h.peer.expansion() + body.len()
                            );
                            datagram.extend_from_slice(&rec);
                            known.push((seq, ct, body));
                        }
                        Err(_) => {
                            assert!(
                                seq > MAX_SEQ
                                    || body.len() + h.peer.expansion() > usize::from(u16::MAX),
                                "seal failed at seq {seq} len {}",
                                body.len()
                            );
                        }
                    }
                    around = seq;
                }
                if known.is_empty() {
                    continue;
                }
                if known.iter().all(|(_, ct, _)| (20..=25).contains(ct)) {
                    assert_eq!(parse_all(&datagram), known.len());
                }
                h.deliver_known(&datagram, &known);
                h.sent.push((datagram, known));
                if h.sent.len() > 32 {
                    h.sent.remove(0);
                }
            }
            Op::PeerSeq(seq) => h.peer.set_next_write_seq(seq % (MAX_SEQ + 3)),
            Op::Replay(which) => {
                if h.sent.is_empty() {
                    continue;
                }
                let (datagram, known) = h.sent[usize::from(which) % h.sent.len()].clone();
                h.deliver_known(&datagram, &known);
            }
            Op::Tamper { which, at, xor } => {
                if h.sent.is_empty() || xor == 0 {
                    continue;
                }
                // The first record of an earlier datagram, one byte changed:
                // whatever the byte (header, explicit nonce, ciphertext,
                // tag), the record no longer authenticates.
                let (datagram, known) = &h.sent[usize::from(which) % h.sent.len()];
                let first = RECORD_HEADER_LEN + h.peer.expansion() + known[0].2.len();
                let mut datagram = datagram[..first.min(datagram.len())].to_vec();
                let at = usize::from(at) % datagram.len();
                datagram[at] ^= xor;
                let highest = h.model.highest();
                let got = h.server.receive(&mut h.protection, &datagram);
                assert!(got.len() <= 2, "tampered record: {got:?}");
                for g in &got {
                    assert!(
                        matches!(g, FuzzReceived::Dropped(_)),
                        "tampered record accepted: {got:?}"
                    );
                }
                assert_eq!(h.model.highest(), highest);
            }
            Op::Glue(which) => {
                if h.sent.is_empty() {
                    continue;
                }
                let mut datagram = Vec::new();
                let mut known = Vec::new();
                for w in which.into_iter().take(4) {
                    let (d, k) = &h.sent[usize::from(w) % h.sent.len()];
                    datagram.extend_from_slice(d);
                    known.extend(k.iter().cloned());
                }
                h.deliver_known(&datagram, &known);
            }
            Op::OtherEpoch {
                delta,
                content_type,
                body,
            } => {
                let other = epoch.wrapping_add(delta.max(1));
                if other == epoch {
                    continue;
                }
                let mut stranger = FuzzSession::new(
                    input.suite,
                    &KEYS.mirrored(),
                    other,
                    h.peer.next_write_seq() % (MAX_SEQ + 1),
                    Vec::new(),
                    0,
                    1200,
                );
                let body = body.bytes();
                let Ok(rec) = stranger.seal(&mut h.protection, content_type, &body) else {
                    continue;
                };
                let highest = h.model.highest();
                let got = h.server.receive(&mut h.protection, &rec);
                let want = if (20..=25).contains(&content_type) {
                    FuzzReceived::Dropped(DropReason::OtherEpoch)
                } else {
                    FuzzReceived::Dropped(DropReason::Malformed)
                };
                assert_eq!(got, vec![want]);
                assert_eq!(h.model.highest(), highest);
            }
            Op::Seal(ct, body) => {
                let body = body.bytes();
                let seq = h.server.next_write_seq();
                match h.server.seal(&mut h.protection, ct, &body) {
                    Ok(rec) => {
                        assert!(seq <= MAX_SEQ, "sealed past 2^48-1");
                        assert_eq!(h.server.next_write_seq(), seq + 1);
                        let parsed = record::parse_record(&rec);
                        if (20..=25).contains(&ct) {
                            let (tail, r) = parsed.expect("own record parses");
                            assert!(tail.is_empty());
                            assert_eq!(r.sequence_number, seq);
                            assert_eq!(r.epoch, epoch);
                            assert_eq!(r.content_type, ct);
                        }
                        // Round trip through the mirrored peer.
                        let got = h.peer.receive(&mut h.protection, &rec);
                        let mut no_flight = None;
                        let want = if !(20..=25).contains(&ct) {
                            vec![FuzzReceived::Dropped(DropReason::Malformed)]
                        } else if !h.peer_model.is_fresh(seq) {
                            vec![FuzzReceived::Dropped(DropReason::Replayed)]
                        } else {
                            let (outcome, marks, _) = expected(ct, &body, &mut no_flight, 0);
                            if marks {
                                h.peer_model.mark(seq);
                            }
                            outcome.into_iter().collect()
                        };
                        assert_eq!(got, want, "round trip of a sealed record");
                    }
                    Err(_) => {
                        assert!(
                            seq > MAX_SEQ
                                || body.len() + h.server.expansion() > usize::from(u16::MAX),
                            "seal failed at {seq}"
                        );
                        // The sequence number advances even on failure
                        // (never reused), except when exhausted.
                        if seq <= MAX_SEQ {
                            assert_eq!(h.server.next_write_seq(), seq + 1);
                        }
                    }
                }
            }
            Op::ServerSeq(seq) => {
                h.server.set_next_write_seq(seq % (MAX_SEQ + 3));
            }
            Op::CloseNotify => {
                let seq = h.server.next_write_seq();
                if let Ok(rec) = h.server.close_notify(&mut h.protection) {
                    let got = h.peer.receive(&mut h.protection, &rec);
                    if h.peer_model.is_fresh(seq) {
                        h.peer_model.mark(seq);
                        assert_eq!(got, vec![FuzzReceived::CloseNotify]);
                    } else {
                        assert_eq!(got, vec![FuzzReceived::Dropped(DropReason::Replayed)]);
                    }
                } else {
                    assert!(seq > MAX_SEQ);
                }
            }
            Op::Window { mark, seq } => {
                assert_eq!(
                    window.is_fresh(seq),
                    window_model.is_fresh(seq),
                    "bare window at {seq}"
                );
                if mark {
                    window.mark(seq);
                    window_model.mark(seq);
                }
                for d in [0, 1, 63, 64, 65] {
                    for p in [seq.saturating_sub(d), seq.saturating_add(d)] {
                        assert_eq!(
                            window.is_fresh(p),
                            window_model.is_fresh(p),
                            "bare window at {p}"
                        );
                    }
                }
            }
        }
        h.check_window(around);
    }
});
