//! May this device (or this gateway on behalf of this device) send through
//! this adapter? Hono's checks, in Hono's order.

use std::sync::Arc;
use std::time::Duration;

use crate::registry::{ADAPTER_TYPE, Device, Registry, RegistryError, Tenant};

/// Why a request is not authorized. Each variant names the CoAP response
/// code the CoAP layer answers with; [`AuthorizationError::status`] gives the
/// same as an HTTP-style number.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizationError {
    /// No such tenant. CoAP 4.04.
    #[error("tenant {0:?} does not exist")]
    TenantUnknown(String),
    /// The tenant is disabled. CoAP 4.03.
    #[error("tenant {0:?} is disabled")]
    TenantDisabled(String),
    /// The tenant has an `adapters` list without an enabled `hono-coap`
    /// entry. CoAP 4.03.
    #[error("the hono-coap adapter is not enabled for tenant {0:?}")]
    AdapterDisabled(String),
    /// No such device in the tenant. CoAP 4.04.
    #[error("device {device_id:?} does not exist in tenant {tenant_id:?}")]
    DeviceUnknown {
        /// Tenant.
        tenant_id: String,
        /// Device.
        device_id: String,
    },
    /// The device is disabled. CoAP 4.04 (Hono does not reveal the
    /// difference to unknown).
    #[error("device {device_id:?} in tenant {tenant_id:?} is disabled")]
    DeviceDisabled {
        /// Tenant.
        tenant_id: String,
        /// Device.
        device_id: String,
    },
    /// The gateway is not in the device's `via` list. CoAP 4.03.
    #[error("gateway {gateway_id:?} may not act on behalf of device {device_id:?}")]
    GatewayNotAuthorized {
        /// Device.
        device_id: String,
        /// Gateway.
        gateway_id: String,
    },
    /// The gateway is disabled or no longer registered. CoAP 4.03.
    #[error("gateway {0:?} is disabled")]
    GatewayDisabled(String),
    /// The registry could not answer. CoAP 5.03.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl AuthorizationError {
    /// The HTTP-style status Hono uses for this error (403, 404 or 503); the
    /// CoAP code is the same class and detail (4.03, 4.04, 5.03).
    pub fn status(&self) -> u16 {
        match self {
            Self::TenantDisabled(_)
            | Self::AdapterDisabled(_)
            | Self::GatewayNotAuthorized { .. }
            | Self::GatewayDisabled(_) => 403,
            Self::TenantUnknown(_) | Self::DeviceUnknown { .. } | Self::DeviceDisabled { .. } => {
                404
            }
            Self::Registry(_) => 503,
        }
    }
}

/// The records a request was authorized with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Authorized {
    /// The tenant (enabled, adapter enabled).
    pub tenant: Arc<Tenant>,
    /// The device the message is from (enabled).
    pub device: Arc<Device>,
    /// The gateway that sent it on the device's behalf, if any (enabled,
    /// in the device's `via`).
    pub gateway: Option<Arc<Device>>,
}

impl Authorized {
    /// The defaults for the device's messages: the tenant's `defaults`
    /// overlaid with the device's own.
    pub fn message_defaults(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut merged = self.tenant.defaults.clone();
        for (k, v) in &self.device.defaults {
            merged.insert(k.clone(), v.clone());
        }
        merged
    }

    /// The content type for a non-empty payload sent without one:
    /// `defaults.content-type` (device, then tenant).
    pub fn default_content_type(&self) -> Option<&str> {
        self.device
            .defaults
            .get("content-type")
            .or_else(|| self.tenant.defaults.get("content-type"))?
            .as_str()
    }

    /// Time-to-live of the device's events: the default `ttl` (device, then
    /// tenant; seconds) capped by the tenant's `resource-limits.max-ttl`;
    /// `max-ttl` alone applies when there is no default. `None` = no TTL.
    pub fn event_ttl(&self) -> Option<Duration> {
        let default = self
            .device
            .defaults
            .get("ttl")
            .or_else(|| self.tenant.defaults.get("ttl"))
            .and_then(serde_json::Value::as_u64);
        let max = self
            .tenant
            .resource_limits
            .max_ttl
            .and_then(|m| u64::try_from(m).ok());
        let secs = match (default, max) {
            (Some(d), Some(m)) => d.min(m),
            (Some(d), None) => d,
            (None, Some(m)) => m,
            (None, None) => return None,
        };
        Some(Duration::from_secs(secs))
    }
}

/// Checks, in Hono's order, that `device_id` of `tenant_id` may send through
/// this adapter — directly (`gateway_id` = `None`) or via `gateway_id`:
///
/// 1. tenant unknown → 4.04, tenant disabled → 4.03;
/// 2. adapter disabled for the tenant → 4.03;
/// 3. device unknown or disabled → 4.04;
/// 4. gateway not in the device's `via` → 4.03;
/// 5. gateway disabled (or gone) → 4.03.
///
/// A gateway id equal to the device id is treated as the device itself.
pub async fn authorize(
    registry: &dyn Registry,
    tenant_id: &str,
    device_id: &str,
    gateway_id: Option<&str>,
) -> Result<Authorized, AuthorizationError> {
    let tenant = registry
        .tenant(tenant_id)
        .await?
        .ok_or_else(|| AuthorizationError::TenantUnknown(tenant_id.to_owned()))?;
    if !tenant.enabled {
        return Err(AuthorizationError::TenantDisabled(tenant_id.to_owned()));
    }
    if !tenant.is_adapter_enabled(ADAPTER_TYPE) {
        return Err(AuthorizationError::AdapterDisabled(tenant_id.to_owned()));
    }
    let device = match registry.device(tenant_id, device_id).await? {
        None => {
            return Err(AuthorizationError::DeviceUnknown {
                tenant_id: tenant_id.to_owned(),
                device_id: device_id.to_owned(),
            });
        }
        Some(d) if !d.enabled => {
            return Err(AuthorizationError::DeviceDisabled {
                tenant_id: tenant_id.to_owned(),
                device_id: device_id.to_owned(),
            });
        }
        Some(d) => d,
    };
    let gateway = match gateway_id.filter(|g| *g != device_id) {
        None => None,
        Some(gateway_id) => {
            if !device.via.iter().any(|v| v == gateway_id) {
                return Err(AuthorizationError::GatewayNotAuthorized {
                    device_id: device_id.to_owned(),
                    gateway_id: gateway_id.to_owned(),
                });
            }
            match registry.device(tenant_id, gateway_id).await? {
                Some(g) if g.enabled => Some(g),
                _ => return Err(AuthorizationError::GatewayDisabled(gateway_id.to_owned())),
            }
        }
    };
    Ok(Authorized {
        tenant,
        device,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_registry::FileRegistry;

    fn registry(json: &str) -> FileRegistry {
        FileRegistry::from_json(json).unwrap()
    }

    async fn status(r: &FileRegistry, t: &str, d: &str, gw: Option<&str>) -> u16 {
        match authorize(r, t, d, gw).await {
            Ok(_) => 204,
            Err(e) => e.status(),
        }
    }

    const BASE: &str = r#"{
      "tenants": [
        {"tenant-id": "ok", "adapters": [{"type": "hono-coap", "enabled": true}]},
        {"tenant-id": "off", "enabled": false},
        {"tenant-id": "noadapter", "adapters": [{"type": "hono-mqtt", "enabled": true}]},
        {"tenant-id": "adapteroff", "adapters": [{"type": "hono-coap", "enabled": false}]}
      ],
      "devices": [
        {"tenant-id": "ok", "device-id": "dev", "via": ["gw", "gw-off", "gw-gone"]},
        {"tenant-id": "ok", "device-id": "dev-off", "enabled": false, "via": ["gw"]},
        {"tenant-id": "ok", "device-id": "gw"},
        {"tenant-id": "ok", "device-id": "gw-off", "enabled": false},
        {"tenant-id": "ok", "device-id": "other-gw"},
        {"tenant-id": "off", "device-id": "dev"},
        {"tenant-id": "noadapter", "device-id": "dev"},
        {"tenant-id": "adapteroff", "device-id": "dev"}
      ]}"#;

    #[tokio::test]
    async fn codes_for_each_failure() {
        let r = registry(BASE);
        assert_eq!(status(&r, "ok", "dev", None).await, 204);
        assert_eq!(status(&r, "ok", "dev", Some("gw")).await, 204);
        assert_eq!(status(&r, "ok", "dev", Some("dev")).await, 204);
        assert_eq!(status(&r, "nope", "dev", None).await, 404);
        assert_eq!(status(&r, "off", "dev", None).await, 403);
        assert_eq!(status(&r, "noadapter", "dev", None).await, 403);
        assert_eq!(status(&r, "adapteroff", "dev", None).await, 403);
        assert_eq!(status(&r, "ok", "unknown", None).await, 404);
        assert_eq!(status(&r, "ok", "dev-off", None).await, 404);
        assert_eq!(status(&r, "ok", "dev", Some("other-gw")).await, 403);
        assert_eq!(status(&r, "ok", "dev", Some("gw-off")).await, 403);
        assert_eq!(status(&r, "ok", "dev", Some("gw-gone")).await, 403);
        let ok = authorize(&r, "ok", "dev", Some("gw")).await.unwrap();
        assert_eq!(ok.gateway.unwrap().device_id, "gw");
        assert_eq!(ok.device.device_id, "dev");
    }

    #[tokio::test]
    async fn defaults_and_ttl_merge_tenant_and_device() {
        let r = registry(
            r#"{"tenants": [
                 {"tenant-id": "t", "defaults": {"content-type": "text/plain", "ttl": 120, "site": "a"},
                  "resource-limits": {"max-ttl": 60}},
                 {"tenant-id": "u", "defaults": {"ttl": 30}},
                 {"tenant-id": "v", "resource-limits": {"max-ttl": -1}}],
               "devices": [
                 {"tenant-id": "t", "device-id": "own", "defaults": {"content-type": "application/json", "ttl": 10}},
                 {"tenant-id": "t", "device-id": "plain"},
                 {"tenant-id": "u", "device-id": "d"},
                 {"tenant-id": "v", "device-id": "d"}]}"#,
        );
        let own = authorize(&r, "t", "own", None).await.unwrap();
        assert_eq!(own.default_content_type(), Some("application/json"));
        assert_eq!(own.event_ttl(), Some(Duration::from_secs(10)));
        let merged = own.message_defaults();
        assert_eq!(merged.get("site").and_then(|v| v.as_str()), Some("a"));
        assert_eq!(merged.get("ttl").and_then(|v| v.as_u64()), Some(10));
        let plain = authorize(&r, "t", "plain", None).await.unwrap();
        assert_eq!(plain.default_content_type(), Some("text/plain"));
        // tenant default 120 s capped by max-ttl 60 s
        assert_eq!(plain.event_ttl(), Some(Duration::from_secs(60)));
        let u = authorize(&r, "u", "d", None).await.unwrap();
        assert_eq!(u.event_ttl(), Some(Duration::from_secs(30)));
        assert_eq!(u.default_content_type(), None);
        let v = authorize(&r, "v", "d", None).await.unwrap();
        assert_eq!(v.event_ttl(), None);
    }

    #[tokio::test]
    async fn precedence_follows_hono() {
        let r = registry(BASE);
        // Disabled tenant wins over an unknown device and a foreign gateway.
        assert!(matches!(
            authorize(&r, "off", "unknown", Some("x")).await,
            Err(AuthorizationError::TenantDisabled(_))
        ));
        // Disabled adapter wins over an unknown device.
        assert!(matches!(
            authorize(&r, "noadapter", "unknown", None).await,
            Err(AuthorizationError::AdapterDisabled(_))
        ));
        // Disabled device wins over a gateway it has in `via`... and one it has not.
        assert!(matches!(
            authorize(&r, "ok", "dev-off", Some("other-gw")).await,
            Err(AuthorizationError::DeviceDisabled { .. })
        ));
        // Gateway not in via wins over the gateway being disabled/unknown.
        assert!(matches!(
            authorize(&r, "ok", "dev", Some("unregistered")).await,
            Err(AuthorizationError::GatewayNotAuthorized { .. })
        ));
        assert!(matches!(
            authorize(&r, "ok", "dev", Some("gw-off")).await,
            Err(AuthorizationError::GatewayDisabled(_))
        ));
    }
}
