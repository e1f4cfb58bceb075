//! The DTLS anti-replay window (RFC 6347 §4.1.2.6): a 64-record sliding
//! bitmap whose right edge is the highest sequence number received in the
//! current epoch.
//!
//! RFC 6347 §4.1.2.6: "The window MUST NOT be updated unless the MAC
//! verification succeeds." Callers therefore ask [`ReplayWindow::is_fresh`]
//! before decrypting and call [`ReplayWindow::mark`] only after the record
//! authenticated.

/// Width of the window in records (the RFC's minimum of 32 is allowed; 64
/// is its default and fits one `u64`).
pub(crate) const WINDOW: u64 = 64;

/// Which sequence numbers of one epoch were already received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReplayWindow {
    /// Highest sequence number marked so far (valid once `any` is set).
    highest: u64,
    /// Bit `i` set: `highest - i` was received.
    bitmap: u64,
    /// Whether any record was marked yet.
    any: bool,
}

impl ReplayWindow {
    /// Whether a record with sequence number `seq` may be accepted: newer
    /// than the right edge, or inside the window and not yet received.
    /// Records left of the window are rejected.
    pub(crate) fn is_fresh(&self, seq: u64) -> bool {
        if !self.any || seq > self.highest {
            return true;
        }
        let offset = self.highest - seq;
        offset < WINDOW && self.bitmap & (1u64 << offset) == 0
    }

    /// Records `seq` as received (after its record authenticated), sliding
    /// the window if it is the new right edge.
    pub(crate) fn mark(&mut self, seq: u64) {
        if !self.any {
            self.any = true;
            self.highest = seq;
            self.bitmap = 1;
            return;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.bitmap = if shift >= WINDOW {
                0
            } else {
                self.bitmap << shift
            };
            self.bitmap |= 1;
            self.highest = seq;
        } else {
            let offset = self.highest - seq;
            if offset < WINDOW {
                self.bitmap |= 1u64 << offset;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(window: &mut ReplayWindow, seq: u64) -> bool {
        if window.is_fresh(seq) {
            window.mark(seq);
            true
        } else {
            false
        }
    }

    #[test]
    fn in_order_records_are_accepted_once() {
        let mut w = ReplayWindow::default();
        for seq in 0..200 {
            assert!(accept(&mut w, seq), "{seq}");
            assert!(!accept(&mut w, seq), "replay of {seq}");
        }
    }

    #[test]
    fn reordered_records_inside_the_window_are_accepted_once() {
        let mut w = ReplayWindow::default();
        assert!(accept(&mut w, 100));
        assert!(accept(&mut w, 37)); // offset 63: the window's left edge
        assert!(!accept(&mut w, 37));
        assert!(!accept(&mut w, 36)); // offset 64: left of the window
        assert!(accept(&mut w, 99));
        assert!(accept(&mut w, 101));
        assert!(!accept(&mut w, 99));
        assert!(!accept(&mut w, 100));
        assert!(!accept(&mut w, 101));
        // Slid by one: 37 is now offset 64 and too old.
        assert!(!accept(&mut w, 38 - 1));
        assert!(accept(&mut w, 38));
    }

    #[test]
    fn a_large_jump_clears_the_window() {
        let mut w = ReplayWindow::default();
        for seq in 0..10 {
            assert!(accept(&mut w, seq));
        }
        assert!(accept(&mut w, 1_000));
        assert!(!accept(&mut w, 9)); // far left of the window
        assert!(accept(&mut w, 999));
        assert!(accept(&mut w, 1_000 - 63));
        assert!(!accept(&mut w, 1_000 - 64));
    }

    #[test]
    fn an_unauthenticated_record_does_not_move_the_window() {
        // Only `mark` moves it: asking is free.
        let mut w = ReplayWindow::default();
        assert!(accept(&mut w, 5));
        assert!(w.is_fresh(1 << 47));
        assert!(w.is_fresh(4));
        assert!(accept(&mut w, 4));
    }

    #[test]
    fn the_highest_48_bit_sequence_number_works() {
        let mut w = ReplayWindow::default();
        let max = (1u64 << 48) - 1;
        assert!(accept(&mut w, max));
        assert!(!accept(&mut w, max));
        assert!(accept(&mut w, max - 1));
    }

    proptest::proptest! {
        /// Against a model that remembers every sequence number: a record
        /// is accepted iff it was never accepted and is not left of the
        /// window.
        #[test]
        fn matches_a_model(seqs in proptest::collection::vec(0u64..300, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut highest: Option<u64> = None;
            for seq in seqs {
                let too_old = highest.is_some_and(|h| seq + WINDOW <= h);
                let expected = !seen.contains(&seq) && !too_old;
                proptest::prop_assert_eq!(accept(&mut w, seq), expected, "seq {}", seq);
                if expected {
                    seen.insert(seq);
                    highest = Some(highest.map_or(seq, |h| h.max(seq)));
                }
            }
        }
    }
}
