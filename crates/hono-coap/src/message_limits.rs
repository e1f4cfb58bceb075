//! Message limits: the payload size limit and per-tenant data-volume
//! accounting (`resource-limits.data-volume`), with Hono's rules.
//!
//! Hono counts data volume with Prometheus; here the counters live in memory
//! per adapter instance (they restart at zero with the process). Time is an
//! argument everywhere, so periods are tested without waiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::registry::{DataVolume, Period, Tenant};

const SECS_PER_DAY: u64 = 86_400;

/// The payload is larger than the adapter accepts. CoAP 4.13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
pub struct PayloadTooLarge {
    /// Size of the payload.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// Checks a payload against the adapter's `--max-payload-size`.
pub fn check_payload_size(len: usize, max: usize) -> Result<(), PayloadTooLarge> {
    if len > max {
        Err(PayloadTooLarge { len, max })
    } else {
        Ok(())
    }
}

/// The size a payload counts with: Hono rounds it up to a multiple of the
/// tenant's `minimum-message-size` when that is > 0
/// (`ceil(len / min) * min`; an empty payload counts 0).
pub fn accounted_size(payload_len: usize, minimum_message_size: u64) -> u64 {
    let len = payload_len as u64;
    if minimum_message_size == 0 {
        return len;
    }
    len.div_ceil(minimum_message_size)
        .saturating_mul(minimum_message_size)
}

/// The tenant's data-volume limit is used up for the current period.
/// CoAP 4.29.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "data volume limit of tenant {tenant_id:?} exceeded: {used} of {limit} bytes used in the current period"
)]
pub struct DataVolumeExceeded {
    /// Tenant.
    pub tenant_id: String,
    /// Bytes (accounted sizes) used in the current period.
    pub used: u64,
    /// Bytes allowed in the current period.
    pub limit: u64,
}

/// Per-tenant data-volume counters.
///
/// Call [`check`](Self::check) before forwarding a message and
/// [`record`](Self::record) after it was forwarded successfully (Hono counts
/// delivered messages only). Only tenants with a configured limit get a
/// counter, so the map is bounded by the registry, not by peers.
#[derive(Debug, Default)]
pub struct DataVolumeMeter {
    usage: Mutex<HashMap<String, Usage>>,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    period_start: SystemTime,
    bytes: u64,
}

/// The accounting period containing an instant, and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountingPeriod {
    /// Start of the period.
    pub start: SystemTime,
    /// Bytes allowed in it.
    pub limit: u64,
}

impl DataVolumeMeter {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a message with `payload_len` bytes may still be sent at `now`:
    /// `used + accounted_size(payload_len) > limit` is refused.
    pub fn check(
        &self,
        tenant: &Tenant,
        payload_len: usize,
        now: SystemTime,
    ) -> Result<(), DataVolumeExceeded> {
        let Some(period) = current_period(tenant, now) else {
            return Ok(());
        };
        let size = accounted_size(payload_len, tenant.minimum_message_size);
        let used = self.used_in(&tenant.tenant_id, period.start);
        if used.saturating_add(size) > period.limit {
            return Err(DataVolumeExceeded {
                tenant_id: tenant.tenant_id.clone(),
                used,
                limit: period.limit,
            });
        }
        Ok(())
    }

    /// Counts a forwarded message of `payload_len` bytes.
    pub fn record(&self, tenant: &Tenant, payload_len: usize, now: SystemTime) {
        let Some(period) = current_period(tenant, now) else {
            return;
        };
        let size = accounted_size(payload_len, tenant.minimum_message_size);
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let entry = usage.entry(tenant.tenant_id.clone()).or_insert(Usage {
            period_start: period.start,
            bytes: 0,
        });
        if entry.period_start != period.start {
            *entry = Usage {
                period_start: period.start,
                bytes: 0,
            };
        }
        entry.bytes = entry.bytes.saturating_add(size);
    }

    /// Bytes counted for `tenant_id` in the period starting at `start`.
    fn used_in(&self, tenant_id: &str, start: SystemTime) -> u64 {
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        match usage.get(tenant_id) {
            Some(u) if u.period_start == start => u.bytes,
            _ => 0,
        }
    }
}

/// The tenant's accounting period at `now`, or `None` when no data-volume
/// limit applies (none configured, `max-bytes` negative, or `now` before
/// `effective-since`).
pub fn current_period(tenant: &Tenant, now: SystemTime) -> Option<AccountingPeriod> {
    let DataVolume {
        max_bytes,
        effective_since: Some(since),
        period: Some(period),
        ..
    } = tenant.resource_limits.data_volume.as_ref()?
    else {
        return None;
    };
    let max_bytes = u64::try_from(*max_bytes).ok()?;
    let elapsed = now.duration_since(*since).ok()?;
    match *period {
        Period::Days { no_of_days } => {
            let length = SECS_PER_DAY.checked_mul(u64::from(no_of_days))?;
            if length == 0 {
                return None;
            }
            let index = elapsed.as_secs() / length;
            let start = since.checked_add(Duration::from_secs(index.checked_mul(length)?))?;
            Some(AccountingPeriod {
                start,
                limit: max_bytes,
            })
        }
        Period::Monthly => {
            let since_utc = time::OffsetDateTime::from(*since);
            let now_utc = time::OffsetDateTime::from(now);
            if (since_utc.year(), since_utc.month()) == (now_utc.year(), now_utc.month()) {
                // First, partial month: the limit is pro-rated by the days
                // left in the month, counting the start day.
                let days_in_month = u64::from(since_utc.month().length(since_utc.year()));
                let remaining = days_in_month - u64::from(since_utc.day()) + 1;
                let limit = (max_bytes.saturating_mul(remaining)).div_ceil(days_in_month);
                Some(AccountingPeriod {
                    start: *since,
                    limit,
                })
            } else {
                let first =
                    time::Date::from_calendar_date(now_utc.year(), now_utc.month(), 1).ok()?;
                let start = SystemTime::from(first.midnight().assume_utc());
                Some(AccountingPeriod {
                    start,
                    limit: max_bytes,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_registry::FileRegistry;

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(
            time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
                .unwrap(),
        )
    }

    fn tenant(limits: &str, min_size: u64) -> std::sync::Arc<Tenant> {
        let json = format!(
            r#"{{"tenants": [{{"tenant-id": "t", "minimum-message-size": {min_size},
                 "resource-limits": {{"data-volume": {limits}}}}}]}}"#
        );
        FileRegistry::from_json(&json)
            .unwrap()
            .snapshot()
            .tenant("t")
            .unwrap()
    }

    #[test]
    fn payload_size_limit() {
        assert!(check_payload_size(2048, 2048).is_ok());
        assert_eq!(
            check_payload_size(2049, 2048),
            Err(PayloadTooLarge {
                len: 2049,
                max: 2048
            })
        );
    }

    #[test]
    fn minimum_message_size_rounds_up() {
        assert_eq!(accounted_size(0, 0), 0);
        assert_eq!(accounted_size(5, 0), 5);
        assert_eq!(accounted_size(0, 4096), 0);
        assert_eq!(accounted_size(1, 4096), 4096);
        assert_eq!(accounted_size(4096, 4096), 4096);
        assert_eq!(accounted_size(4097, 4096), 8192);
    }

    #[test]
    fn days_period_limits_and_resets() {
        let t = tenant(
            r#"{"max-bytes": 100, "effective-since": "2026-01-01T00:00:00Z", "period": {"mode": "days", "no-of-days": 10}}"#,
            0,
        );
        let meter = DataVolumeMeter::new();
        let day3 = at("2026-01-03T12:00:00Z");
        meter.check(&t, 60, day3).unwrap();
        meter.record(&t, 60, day3);
        meter.check(&t, 40, day3).unwrap();
        let err = meter.check(&t, 41, day3).unwrap_err();
        assert_eq!((err.used, err.limit), (60, 100));
        meter.record(&t, 40, day3);
        assert!(meter.check(&t, 1, at("2026-01-10T23:59:59Z")).is_err());
        assert!(meter.check(&t, 0, at("2026-01-10T23:59:59Z")).is_ok());
        // Day 11 starts the second period.
        let p = current_period(&t, at("2026-01-11T00:00:00Z")).unwrap();
        assert_eq!(p.start, at("2026-01-11T00:00:00Z"));
        meter.check(&t, 100, at("2026-01-11T00:00:00Z")).unwrap();
        meter.record(&t, 70, at("2026-01-15T00:00:00Z"));
        assert!(meter.check(&t, 31, at("2026-01-20T23:00:00Z")).is_err());
        assert_eq!(
            current_period(&t, at("2026-02-05T00:00:00Z"))
                .unwrap()
                .start,
            at("2026-01-31T00:00:00Z")
        );
    }

    #[test]
    fn no_limit_before_effective_since_or_when_unlimited() {
        let t = tenant(
            r#"{"max-bytes": 10, "effective-since": "2026-01-01T00:00:00Z", "period": {"mode": "monthly"}}"#,
            0,
        );
        let meter = DataVolumeMeter::new();
        meter.check(&t, 1000, at("2025-12-31T23:59:59Z")).unwrap();
        meter.record(&t, 1000, at("2025-12-31T23:59:59Z"));
        meter.check(&t, 10, at("2026-01-01T00:00:00Z")).unwrap();
        for limits in [
            r#"{"max-bytes": -1, "effective-since": "2026-01-01T00:00:00Z", "period": {"mode": "monthly"}}"#,
            r#"{"max-bytes": 10, "period": {"mode": "monthly"}}"#,
            r#"{"max-bytes": 10, "effective-since": "2026-01-01T00:00:00Z"}"#,
        ] {
            let t = tenant(limits, 0);
            assert_eq!(
                current_period(&t, at("2026-03-01T00:00:00Z")),
                None,
                "{limits}"
            );
            meter
                .check(&t, 1_000_000, at("2026-03-01T00:00:00Z"))
                .unwrap();
        }
    }

    #[test]
    fn monthly_period_prorates_the_first_month() {
        // Effective from the 11th of a 30-day month: 20 of 30 days remain.
        let t = tenant(
            r#"{"max-bytes": 3000, "effective-since": "2026-04-11T08:00:00Z", "period": {"mode": "monthly"}}"#,
            0,
        );
        let april = current_period(&t, at("2026-04-20T00:00:00Z")).unwrap();
        assert_eq!(
            april,
            AccountingPeriod {
                start: at("2026-04-11T08:00:00Z"),
                limit: 2000
            }
        );
        let may = current_period(&t, at("2026-05-31T23:59:59Z")).unwrap();
        assert_eq!(
            may,
            AccountingPeriod {
                start: at("2026-05-01T00:00:00Z"),
                limit: 3000
            }
        );
        let next_year = current_period(&t, at("2027-02-03T00:00:00Z")).unwrap();
        assert_eq!(next_year.start, at("2027-02-01T00:00:00Z"));

        let meter = DataVolumeMeter::new();
        meter.record(&t, 2000, at("2026-04-30T23:59:59Z"));
        assert!(meter.check(&t, 1, at("2026-04-30T23:59:59Z")).is_err());
        meter.check(&t, 3000, at("2026-05-01T00:00:00Z")).unwrap();

        // From the 1st there is nothing to pro-rate.
        let t = tenant(
            r#"{"max-bytes": 3000, "effective-since": "2026-02-01T00:00:00Z", "period": {"mode": "monthly"}}"#,
            0,
        );
        assert_eq!(
            current_period(&t, at("2026-02-10T00:00:00Z"))
                .unwrap()
                .limit,
            3000
        );
        // Pro-rating rounds up: 28-day February from the 28th = 1/28.
        let t = tenant(
            r#"{"max-bytes": 100, "effective-since": "2026-02-28T00:00:00Z", "period": {"mode": "monthly"}}"#,
            0,
        );
        assert_eq!(
            current_period(&t, at("2026-02-28T10:00:00Z"))
                .unwrap()
                .limit,
            4
        );
    }

    #[test]
    fn minimum_message_size_counts_against_the_limit() {
        let t = tenant(
            r#"{"max-bytes": 10000, "effective-since": "2026-01-01T00:00:00Z", "period": {"mode": "days", "no-of-days": 1}}"#,
            4096,
        );
        let meter = DataVolumeMeter::new();
        let now = at("2026-01-01T01:00:00Z");
        meter.check(&t, 1, now).unwrap();
        meter.record(&t, 1, now); // counts 4096
        meter.record(&t, 10, now); // counts 4096 -> 8192
        // 1 more byte would count 4096 -> 12288 > 10000
        let err = meter.check(&t, 1, now).unwrap_err();
        assert_eq!(err.used, 8192);
        // an empty payload counts nothing
        meter.check(&t, 0, now).unwrap();
    }
}
