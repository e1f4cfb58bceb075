//! The device registry: Hono's tenant, device and credentials records, the
//! [`Registry`] trait the adapter looks them up through, and PSK identities.
//!
//! The record shapes follow Hono's Device Registry Management API (kebab-case
//! JSON field names). Fields this adapter does not use are ignored when
//! parsing, so records exported from a Hono registry load unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

/// The adapter type name under which this adapter appears in a tenant's
/// `adapters` list.
pub const ADAPTER_TYPE: &str = "hono-coap";

/// Credentials type of pre-shared keys.
pub const CREDENTIALS_TYPE_PSK: &str = "psk";

/// Default of a tenant's `max-ttd` (seconds a device may wait for a command).
pub const DEFAULT_MAX_TTD_SECS: u32 = 60;

/// Future returned by [`Registry`] look-ups.
pub type RegistryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send + 'a>>;

/// Where the adapter looks up tenants, devices and credentials.
///
/// The look-ups are asynchronous so that stores behind a network (e.g. a
/// PostgreSQL registry with Hono's JDBC schema) fit behind the same trait;
/// `Ok(None)` means "no such record", `Err` means "the store could not
/// answer" (the CoAP layer answers 5.03).
///
/// [`Registry::psk`] is synchronous because it is called from the DTLS
/// handshake's PSK callback; implementations answer it from an in-memory
/// snapshot. The trait is object safe: the adapter holds an
/// `Arc<dyn Registry>`.
pub trait Registry: Send + Sync {
    /// The tenant with this id.
    fn tenant<'a>(&'a self, tenant_id: &'a str) -> RegistryFuture<'a, Option<Arc<Tenant>>>;

    /// The device with this id in this tenant.
    fn device<'a>(
        &'a self,
        tenant_id: &'a str,
        device_id: &'a str,
    ) -> RegistryFuture<'a, Option<Arc<Device>>>;

    /// The credentials record of `kind` (e.g. [`CREDENTIALS_TYPE_PSK`]) with
    /// this auth-id in this tenant, whether enabled or not.
    fn credentials<'a>(
        &'a self,
        tenant_id: &'a str,
        auth_id: &'a str,
        kind: &'a str,
    ) -> RegistryFuture<'a, Option<Arc<Credentials>>>;

    /// The pre-shared key for a DTLS handshake: the key of the first secret
    /// of the enabled `psk` credentials of `auth_id` in `tenant_id` that is
    /// enabled and valid at `now` (`not-before` ≤ now < `not-after`).
    ///
    /// `None` when there is no such credentials record, it is disabled, or no
    /// secret is currently valid; the handshake then fails. A disabled
    /// *device* still gets its key (Hono lets it complete the handshake and
    /// answers its requests with 4.04).
    fn psk(&self, tenant_id: &str, auth_id: &str, now: SystemTime) -> Option<PskGrant>;

    /// [`psk`](Self::psk) for a raw DTLS PSK identity `auth-id{separator}tenant`
    /// (what the DTLS callback receives); `None` for a malformed identity.
    fn psk_for_identity(
        &self,
        identity: &[u8],
        separator: char,
        now: SystemTime,
    ) -> Option<PskGrant> {
        let identity = PskIdentity::parse(identity, separator).ok()?;
        self.psk(identity.tenant_id, identity.auth_id, now)
    }
}

/// A registry store could not answer a look-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The store is unreachable or failed; the CoAP layer answers 5.03.
    #[error("device registry unavailable: {0}")]
    Unavailable(String),
}

/// The key and identity a DTLS PSK handshake was accepted with.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PskGrant {
    /// Tenant of the device.
    pub tenant_id: String,
    /// Auth-id of the credentials.
    pub auth_id: String,
    /// Device the credentials belong to.
    pub device_id: String,
    /// The pre-shared key (base64-decoded secret).
    pub key: Vec<u8>,
}

impl fmt::Debug for PskGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskGrant")
            .field("tenant_id", &self.tenant_id)
            .field("auth_id", &self.auth_id)
            .field("device_id", &self.device_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A DTLS PSK identity `auth-id@tenant`, split on the first separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PskIdentity<'a> {
    /// The part before the separator.
    pub auth_id: &'a str,
    /// The part after the separator.
    pub tenant_id: &'a str,
}

/// Hono's default separator between auth-id and tenant in a PSK identity.
pub const DEFAULT_PSK_SEPARATOR: char = '@';

/// A PSK identity that is not `auth-id{separator}tenant`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PskIdentityError {
    /// The identity is not UTF-8.
    #[error("PSK identity is not UTF-8")]
    NotUtf8,
    /// The separator does not occur, or auth-id or tenant is empty.
    #[error("PSK identity must be auth-id{separator}tenant")]
    Malformed {
        /// The separator that was expected.
        separator: char,
    },
}

impl<'a> PskIdentity<'a> {
    /// Splits `identity` on the first `separator` (Hono: the auth-id may not
    /// contain it, the tenant may).
    pub fn parse(identity: &'a [u8], separator: char) -> Result<Self, PskIdentityError> {
        let identity = std::str::from_utf8(identity).map_err(|_| PskIdentityError::NotUtf8)?;
        match identity.split_once(separator) {
            Some((auth_id, tenant_id)) if !auth_id.is_empty() && !tenant_id.is_empty() => {
                Ok(Self { auth_id, tenant_id })
            }
            _ => Err(PskIdentityError::Malformed { separator }),
        }
    }
}

/// A tenant record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct Tenant {
    /// The tenant id.
    pub tenant_id: String,
    /// A disabled tenant's devices get 4.03. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Per-adapter settings. `None` (no list) enables every adapter; a list
    /// enables only the adapters named in it with `enabled: true`.
    #[serde(default)]
    pub adapters: Option<Vec<AdapterConfig>>,
    /// Resource limits.
    #[serde(default)]
    pub resource_limits: ResourceLimits,
    /// Payload sizes are rounded up to a multiple of this for data-volume
    /// accounting (0 = no rounding). Default: 0.
    #[serde(default)]
    pub minimum_message_size: u64,
    /// Upper bound of a device's `hono-ttd`, seconds. Default: 60.
    #[serde(default)]
    pub max_ttd: Option<u32>,
    /// Default properties for all devices of the tenant (e.g.
    /// `content-type`, `ttl`); a device's own `defaults` take precedence.
    #[serde(default)]
    pub defaults: serde_json::Map<String, serde_json::Value>,
}

fn default_true() -> bool {
    true
}

impl Tenant {
    /// The `adapters` entry for `adapter_type`, if the tenant has a list
    /// containing it.
    pub fn adapter(&self, adapter_type: &str) -> Option<&AdapterConfig> {
        self.adapters
            .as_ref()?
            .iter()
            .find(|a| a.adapter_type == adapter_type)
    }

    /// Whether `adapter_type` may be used by this tenant's devices: no list
    /// enables all adapters, a list enables only its enabled entries.
    pub fn is_adapter_enabled(&self, adapter_type: &str) -> bool {
        match &self.adapters {
            None => true,
            Some(_) => self.adapter(adapter_type).is_some_and(|a| a.enabled),
        }
    }

    /// The `ext.timeoutToAck` of this adapter's entry, milliseconds
    /// (-1 = always piggy-back, 0 = ACK at once).
    pub fn timeout_to_ack_ms(&self) -> Option<i64> {
        self.adapter(ADAPTER_TYPE)?
            .ext
            .get("timeoutToAck")?
            .as_i64()
    }

    /// The `ext.deviceTriggeredTimeoutToAck` of this adapter's entry, ms.
    pub fn device_triggered_timeout_to_ack_ms(&self) -> Option<i64> {
        self.adapter(ADAPTER_TYPE)?
            .ext
            .get("deviceTriggeredTimeoutToAck")?
            .as_i64()
    }

    /// The tenant's `max-ttd` in seconds, default 60.
    pub fn max_ttd_secs(&self) -> u32 {
        self.max_ttd.unwrap_or(DEFAULT_MAX_TTD_SECS)
    }
}

/// One entry of a tenant's `adapters` list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct AdapterConfig {
    /// Adapter type, e.g. `hono-coap`.
    #[serde(rename = "type")]
    pub adapter_type: String,
    /// Whether the adapter is enabled for the tenant. Default: false (as in
    /// Hono's Tenant API).
    #[serde(default)]
    pub enabled: bool,
    /// Adapter-specific settings (e.g. `timeoutToAck`).
    #[serde(default)]
    pub ext: serde_json::Map<String, serde_json::Value>,
}

/// A tenant's `resource-limits`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct ResourceLimits {
    /// Data-volume limit.
    #[serde(default)]
    pub data_volume: Option<DataVolume>,
    /// Maximum time-to-live of events, seconds (-1 or absent = unlimited).
    #[serde(default)]
    pub max_ttl: Option<i64>,
}

/// `resource-limits.data-volume`: at most `max-bytes` payload bytes per
/// accounting period, starting at `effective-since`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct DataVolume {
    /// Bytes allowed per period; negative = unlimited. Default: -1.
    #[serde(default = "unlimited")]
    pub max_bytes: i64,
    /// Start of the first period; without it no limit applies.
    #[serde(default, deserialize_with = "rfc3339::deserialize_option")]
    pub effective_since: Option<SystemTime>,
    /// Length of an accounting period; without it no limit applies.
    #[serde(default)]
    pub period: Option<Period>,
}

fn unlimited() -> i64 {
    -1
}

/// An accounting period of a data-volume limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Period {
    /// Consecutive periods of `no-of-days` days from `effective-since`.
    Days {
        /// Length of a period in days (≥ 1).
        #[serde(rename = "no-of-days")]
        no_of_days: u32,
    },
    /// Calendar months (UTC); the first period runs from `effective-since`
    /// to the end of its month with a pro-rated limit.
    Monthly,
}

/// A device record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct Device {
    /// Tenant of the device.
    pub tenant_id: String,
    /// Device id.
    pub device_id: String,
    /// A disabled device gets 4.04. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Gateways that may act on behalf of this device.
    #[serde(default)]
    pub via: Vec<String>,
    /// Default properties: `content-type` is the payload's default content
    /// type; every entry is also added as a header to downstream messages.
    #[serde(default)]
    pub defaults: serde_json::Map<String, serde_json::Value>,
}

impl Device {
    /// The device's default content type (`defaults.content-type`).
    pub fn default_content_type(&self) -> Option<&str> {
        self.defaults.get("content-type")?.as_str()
    }
}

/// A credentials record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct Credentials {
    /// Tenant of the device.
    pub tenant_id: String,
    /// Device the credentials authenticate.
    pub device_id: String,
    /// Credentials type; this adapter uses `psk`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The identity the device presents (before `@tenant`).
    pub auth_id: String,
    /// Disabled credentials authenticate nobody. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Secrets, in order of preference.
    #[serde(default)]
    pub secrets: Vec<Secret>,
}

impl Credentials {
    /// The key of the first enabled secret valid at `now`, if these are
    /// enabled credentials.
    pub fn valid_key(&self, now: SystemTime) -> Option<&[u8]> {
        if !self.enabled {
            return None;
        }
        self.secrets
            .iter()
            .find(|s| s.is_valid_at(now) && s.key.is_some())
            .and_then(|s| s.key.as_ref())
            .map(|k| k.0.as_slice())
    }
}

/// One secret of a credentials record.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct Secret {
    /// The pre-shared key (base64 in the file, decoded here).
    #[serde(default)]
    pub key: Option<SecretKey>,
    /// Not valid before this instant.
    #[serde(default, deserialize_with = "rfc3339::deserialize_option")]
    pub not_before: Option<SystemTime>,
    /// Not valid from this instant on.
    #[serde(default, deserialize_with = "rfc3339::deserialize_option")]
    pub not_after: Option<SystemTime>,
    /// Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Secret {
    /// Whether the secret is enabled and inside its validity window at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.enabled
            && self.not_before.is_none_or(|nb| nb <= now)
            && self.not_after.is_none_or(|na| now < na)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// A base64-decoded secret key. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = String::deserialize(deserializer)?;
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let key = engine
            .decode(text.trim())
            .map_err(|e| serde::de::Error::custom(format!("secret key is not base64: {e}")))?;
        if key.is_empty() {
            return Err(serde::de::Error::custom("secret key is empty"));
        }
        Ok(Self(key))
    }
}

/// The whole registry file: three lists of records.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct RegistryDocument {
    #[serde(default)]
    pub(crate) tenants: Vec<Tenant>,
    #[serde(default)]
    pub(crate) devices: Vec<Device>,
    #[serde(default)]
    pub(crate) credentials: Vec<Credentials>,
}

/// An indexed, validated registry, as held in memory.
#[derive(Debug, Default)]
pub struct RegistrySnapshot {
    tenants: BTreeMap<String, Arc<Tenant>>,
    devices: BTreeMap<(String, String), Arc<Device>>,
    /// Keyed by (tenant, type, auth-id).
    credentials: BTreeMap<(String, String, String), Arc<Credentials>>,
}

impl RegistrySnapshot {
    /// Indexes a parsed document, rejecting duplicate ids and references to
    /// unknown tenants or devices.
    pub(crate) fn build(doc: RegistryDocument) -> Result<Self, String> {
        let mut snapshot = Self::default();
        for tenant in doc.tenants {
            if tenant.tenant_id.is_empty() {
                return Err("a tenant has an empty tenant-id".into());
            }
            if let Some(DataVolume {
                period: Some(Period::Days { no_of_days: 0 }),
                ..
            }) = &tenant.resource_limits.data_volume
            {
                return Err(format!(
                    "tenant {:?}: data-volume period no-of-days must be at least 1",
                    tenant.tenant_id
                ));
            }
            let id = tenant.tenant_id.clone();
            if snapshot
                .tenants
                .insert(id.clone(), Arc::new(tenant))
                .is_some()
            {
                return Err(format!("duplicate tenant {id:?}"));
            }
        }
        for device in doc.devices {
            if !snapshot.tenants.contains_key(&device.tenant_id) {
                return Err(format!(
                    "device {:?} belongs to unknown tenant {:?}",
                    device.device_id, device.tenant_id
                ));
            }
            if device.device_id.is_empty() {
                return Err(format!(
                    "a device of tenant {:?} has an empty device-id",
                    device.tenant_id
                ));
            }
            let key = (device.tenant_id.clone(), device.device_id.clone());
            if snapshot
                .devices
                .insert(key.clone(), Arc::new(device))
                .is_some()
            {
                return Err(format!(
                    "duplicate device {:?} in tenant {:?}",
                    key.1, key.0
                ));
            }
        }
        for creds in doc.credentials {
            if !snapshot
                .devices
                .contains_key(&(creds.tenant_id.clone(), creds.device_id.clone()))
            {
                return Err(format!(
                    "credentials {:?} belong to unknown device {:?} in tenant {:?}",
                    creds.auth_id, creds.device_id, creds.tenant_id
                ));
            }
            if creds.kind == CREDENTIALS_TYPE_PSK && creds.secrets.iter().any(|s| s.key.is_none()) {
                return Err(format!(
                    "psk credentials {:?} in tenant {:?} have a secret without a key",
                    creds.auth_id, creds.tenant_id
                ));
            }
            let key = (
                creds.tenant_id.clone(),
                creds.kind.clone(),
                creds.auth_id.clone(),
            );
            if snapshot
                .credentials
                .insert(key.clone(), Arc::new(creds))
                .is_some()
            {
                return Err(format!(
                    "duplicate {} credentials {:?} in tenant {:?}",
                    key.1, key.2, key.0
                ));
            }
        }
        Ok(snapshot)
    }

    /// Number of tenants, devices and credentials records.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.tenants.len(),
            self.devices.len(),
            self.credentials.len(),
        )
    }

    /// The tenant with this id.
    pub fn tenant(&self, tenant_id: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(tenant_id).cloned()
    }

    /// The device with this id in this tenant.
    pub fn device(&self, tenant_id: &str, device_id: &str) -> Option<Arc<Device>> {
        self.devices
            .get(&(tenant_id.to_owned(), device_id.to_owned()))
            .cloned()
    }

    /// The credentials of `kind` with this auth-id in this tenant.
    pub fn credentials(
        &self,
        tenant_id: &str,
        auth_id: &str,
        kind: &str,
    ) -> Option<Arc<Credentials>> {
        self.credentials
            .get(&(tenant_id.to_owned(), kind.to_owned(), auth_id.to_owned()))
            .cloned()
    }

    /// See [`Registry::psk`].
    pub fn psk(&self, tenant_id: &str, auth_id: &str, now: SystemTime) -> Option<PskGrant> {
        let creds = self.credentials(tenant_id, auth_id, CREDENTIALS_TYPE_PSK)?;
        let key = creds.valid_key(now)?;
        Some(PskGrant {
            tenant_id: creds.tenant_id.clone(),
            auth_id: creds.auth_id.clone(),
            device_id: creds.device_id.clone(),
            key: key.to_vec(),
        })
    }
}

/// RFC 3339 timestamps (`2026-01-01T00:00:00Z`, `…+02:00`) as `SystemTime`.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::Deserialize;

    pub(super) fn deserialize_option<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        let parsed =
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    serde::de::Error::custom(format!("invalid RFC 3339 timestamp {text:?}: {e}"))
                })?;
        Ok(Some(SystemTime::from(parsed)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    pub(crate) const SPEC_SAMPLE: &str = r#"{
  "tenants": [{"tenant-id": "DEFAULT_TENANT", "enabled": true,
               "adapters": [{"type": "hono-coap", "enabled": true, "ext": {"timeoutToAck": 500}}],
               "resource-limits": {"data-volume": {"max-bytes": 1000000, "effective-since": "2026-01-01T00:00:00Z",
                                                   "period": {"mode": "days", "no-of-days": 30}}},
               "minimum-message-size": 0, "max-ttd": 60}],
  "devices": [{"tenant-id": "DEFAULT_TENANT", "device-id": "4711", "enabled": true, "via": ["gw-1"],
               "defaults": {"content-type": "application/json"}}],
  "credentials": [{"tenant-id": "DEFAULT_TENANT", "device-id": "4711", "type": "psk", "auth-id": "sensor1",
                   "enabled": true, "secrets": [{"key": "aG9uby1zZWNyZXQ="}]}]
}"#;

    fn snapshot(json: &str) -> RegistrySnapshot {
        RegistrySnapshot::build(serde_json::from_str(json).unwrap()).unwrap()
    }

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(
            time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
                .unwrap(),
        )
    }

    #[test]
    fn parses_the_spec_sample() {
        let s = snapshot(SPEC_SAMPLE);
        assert_eq!(s.counts(), (1, 1, 1));
        let t = s.tenant("DEFAULT_TENANT").unwrap();
        assert!(t.enabled);
        assert!(t.is_adapter_enabled(ADAPTER_TYPE));
        assert!(!t.is_adapter_enabled("hono-http"));
        assert_eq!(t.timeout_to_ack_ms(), Some(500));
        assert_eq!(t.max_ttd_secs(), 60);
        assert_eq!(t.minimum_message_size, 0);
        let dv = t.resource_limits.data_volume.as_ref().unwrap();
        assert_eq!(dv.max_bytes, 1_000_000);
        assert_eq!(dv.effective_since, Some(at("2026-01-01T00:00:00Z")));
        assert_eq!(dv.period, Some(Period::Days { no_of_days: 30 }));
        let d = s.device("DEFAULT_TENANT", "4711").unwrap();
        assert_eq!(d.via, vec!["gw-1".to_owned()]);
        assert_eq!(d.default_content_type(), Some("application/json"));
        let c = s.credentials("DEFAULT_TENANT", "sensor1", "psk").unwrap();
        assert_eq!(c.device_id, "4711");
        assert!(
            s.credentials("DEFAULT_TENANT", "sensor1", "hashed-password")
                .is_none()
        );
        let grant = s
            .psk("DEFAULT_TENANT", "sensor1", SystemTime::now())
            .unwrap();
        assert_eq!(grant.key, b"hono-secret");
        assert_eq!(grant.device_id, "4711");
        assert!(!format!("{grant:?}").contains("hono-secret"));
    }

    #[test]
    fn defaults_apply_and_unknown_fields_are_ignored() {
        let s = snapshot(
            r#"{"tenants": [{"tenant-id": "t", "trusted-ca": [], "resource-limits": {"data-volume": {"period": {"mode": "monthly"}}}}],
                "devices": [{"tenant-id": "t", "device-id": "d", "status": {"created": "x"}}]}"#,
        );
        let t = s.tenant("t").unwrap();
        assert!(t.enabled);
        assert!(t.adapters.is_none());
        assert!(t.is_adapter_enabled(ADAPTER_TYPE));
        assert_eq!(t.timeout_to_ack_ms(), None);
        let dv = t.resource_limits.data_volume.as_ref().unwrap();
        assert_eq!(dv.max_bytes, -1);
        assert_eq!(dv.period, Some(Period::Monthly));
        let d = s.device("t", "d").unwrap();
        assert!(d.enabled && d.via.is_empty() && d.defaults.is_empty());
    }

    #[test]
    fn adapter_list_without_this_adapter_disables_it() {
        let s = snapshot(
            r#"{"tenants": [
                 {"tenant-id": "a", "adapters": [{"type": "hono-http", "enabled": true}]},
                 {"tenant-id": "b", "adapters": [{"type": "hono-coap", "enabled": false}]},
                 {"tenant-id": "c", "adapters": [{"type": "hono-coap"}]},
                 {"tenant-id": "d", "adapters": []}]}"#,
        );
        for t in ["a", "b", "c", "d"] {
            assert!(
                !s.tenant(t).unwrap().is_adapter_enabled(ADAPTER_TYPE),
                "tenant {t}"
            );
        }
    }

    #[test]
    fn psk_uses_the_first_secret_valid_now() {
        let s = snapshot(
            r#"{"tenants": [{"tenant-id": "t"}],
                "devices": [{"tenant-id": "t", "device-id": "d"}],
                "credentials": [{"tenant-id": "t", "device-id": "d", "type": "psk", "auth-id": "a", "secrets": [
                   {"key": "b2xk", "not-after": "2026-01-01T00:00:00Z"},
                   {"key": "ZGlzYWJsZWQ=", "enabled": false},
                   {"key": "bmV3", "not-before": "2026-01-01T00:00:00+00:00", "not-after": "2026-06-01T02:00:00+02:00"},
                   {"key": "bGF0ZXI", "not-before": "2026-03-01T00:00:00Z"}]}]}"#,
        );
        let key = |t: &str| s.psk("t", "a", at(t)).map(|g| g.key);
        assert_eq!(key("2025-12-31T23:59:59Z"), Some(b"old".to_vec()));
        // not-after is exclusive, not-before inclusive
        assert_eq!(key("2026-01-01T00:00:00Z"), Some(b"new".to_vec()));
        assert_eq!(key("2026-05-31T23:59:59Z"), Some(b"new".to_vec()));
        // the third secret ended at 2026-06-01T00:00Z; the fourth (no padding) follows
        assert_eq!(key("2026-06-01T00:00:00Z"), Some(b"later".to_vec()));
        assert_eq!(s.psk("t", "nobody", at("2026-06-01T00:00:00Z")), None);
        assert_eq!(s.psk("other", "a", at("2026-06-01T00:00:00Z")), None);
    }

    #[test]
    fn disabled_credentials_give_no_key_but_disabled_device_does() {
        let s = snapshot(
            r#"{"tenants": [{"tenant-id": "t"}],
                "devices": [{"tenant-id": "t", "device-id": "d", "enabled": false}, {"tenant-id": "t", "device-id": "e"}],
                "credentials": [
                  {"tenant-id": "t", "device-id": "d", "type": "psk", "auth-id": "a", "secrets": [{"key": "a2V5"}]},
                  {"tenant-id": "t", "device-id": "e", "type": "psk", "auth-id": "b", "enabled": false, "secrets": [{"key": "a2V5"}]}]}"#,
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        assert_eq!(s.psk("t", "a", now).unwrap().key, b"key");
        assert_eq!(s.psk("t", "b", now), None);
    }

    #[test]
    fn invalid_records_are_rejected() {
        for (json, why) in [
            (
                r#"{"tenants": [{"tenant-id": "t"}, {"tenant-id": "t"}]}"#,
                "duplicate tenant",
            ),
            (
                r#"{"devices": [{"tenant-id": "x", "device-id": "d"}]}"#,
                "unknown tenant",
            ),
            (
                r#"{"tenants": [{"tenant-id": "t"}], "credentials": [{"tenant-id": "t", "device-id": "d", "type": "psk", "auth-id": "a"}]}"#,
                "unknown device",
            ),
            (
                r#"{"tenants": [{"tenant-id": "t", "resource-limits": {"data-volume": {"period": {"mode": "days", "no-of-days": 0}}}}]}"#,
                "no-of-days",
            ),
        ] {
            let err = RegistrySnapshot::build(serde_json::from_str(json).unwrap()).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        for json in [
            r#"{"tenants": [{"tenant-id": "t"}], "devices": [{"tenant-id": "t", "device-id": "d"}],
                "credentials": [{"tenant-id": "t", "device-id": "d", "type": "psk", "auth-id": "a", "secrets": [{"key": "not base64!"}]}]}"#,
            r#"{"tenants": [{"tenant-id": "t", "resource-limits": {"data-volume": {"effective-since": "yesterday"}}}]}"#,
            r#"{"tenants": [{"tenant-id": "t", "resource-limits": {"data-volume": {"period": {"mode": "weekly"}}}}]}"#,
        ] {
            assert!(
                serde_json::from_str::<RegistryDocument>(json).is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn psk_identity_splits_on_the_first_separator() {
        assert_eq!(
            PskIdentity::parse(b"sensor1@DEFAULT_TENANT", '@').unwrap(),
            PskIdentity {
                auth_id: "sensor1",
                tenant_id: "DEFAULT_TENANT"
            }
        );
        assert_eq!(
            PskIdentity::parse(b"a@b@c", '@').unwrap(),
            PskIdentity {
                auth_id: "a",
                tenant_id: "b@c"
            }
        );
        assert_eq!(
            PskIdentity::parse(b"a|t", '|').unwrap(),
            PskIdentity {
                auth_id: "a",
                tenant_id: "t"
            }
        );
        for bad in [&b"nosep"[..], b"@t", b"a@", b""] {
            assert!(matches!(
                PskIdentity::parse(bad, '@'),
                Err(PskIdentityError::Malformed { separator: '@' })
            ));
        }
        assert_eq!(
            PskIdentity::parse(&[0xff, b'@', b't'], '@'),
            Err(PskIdentityError::NotUtf8)
        );
    }
}
