//! The device registry the Hono-mode tests use: two tenants, devices for
//! load, a gateway and PSK credentials, written to a temporary file.

use crate::temp_file::{TempFile, temp_file};

/// Tenant A: devices `d0`..`d15`, gateway `gw`, device `dv` (via `gw`),
/// device `solo` (no via). Tenant B: device `b1`.
pub const REGISTRY: &str = r#"{
  "tenants": [{"tenant-id": "TA"}, {"tenant-id": "TB"}],
  "devices": [
    {"tenant-id": "TA", "device-id": "d0"}, {"tenant-id": "TA", "device-id": "d1"},
    {"tenant-id": "TA", "device-id": "d2"}, {"tenant-id": "TA", "device-id": "d3"},
    {"tenant-id": "TA", "device-id": "d4"}, {"tenant-id": "TA", "device-id": "d5"},
    {"tenant-id": "TA", "device-id": "d6"}, {"tenant-id": "TA", "device-id": "d7"},
    {"tenant-id": "TA", "device-id": "gw"},
    {"tenant-id": "TA", "device-id": "dv", "via": ["gw"]},
    {"tenant-id": "TA", "device-id": "solo"},
    {"tenant-id": "TB", "device-id": "b1"}
  ],
  "credentials": [
    {"tenant-id": "TA", "device-id": "d0", "type": "psk", "auth-id": "d0",
     "secrets": [{"key": "c2VjcmV0LWE="}]},
    {"tenant-id": "TA", "device-id": "gw", "type": "psk", "auth-id": "gw",
     "secrets": [{"key": "c2VjcmV0LWd3"}]},
    {"tenant-id": "TB", "device-id": "b1", "type": "psk", "auth-id": "b1",
     "secrets": [{"key": "c2VjcmV0LWI="}]}
  ]
}"#;

/// PSK identity and key of device `d0` of tenant `TA`.
pub const D0: (&str, &str) = ("d0@TA", "secret-a");
/// PSK identity and key of gateway `gw` of tenant `TA`.
pub const GW: (&str, &str) = ("gw@TA", "secret-gw");
/// PSK identity and key of device `b1` of tenant `TB`.
pub const B1: (&str, &str) = ("b1@TB", "secret-b");

/// Writes [`REGISTRY`] to a fresh temporary file.
pub fn registry_file() -> TempFile {
    temp_file("registry.json", REGISTRY)
}
