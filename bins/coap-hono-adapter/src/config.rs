//! The command line and the typed configuration (flags > `COAP_HONO_*`
//! environment > TOML file > defaults).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use gateway_kit::transmission::{Transmission, checked_dtls_idle_timeout};
use gateway_kit::{ByteSize, HumanDuration, LogFormat, OpsArgs, SecretUrl};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of the environment variables (`COAP_HONO_REGISTRY`, ...).
pub(crate) const ENV_PREFIX: &str = "COAP_HONO";

/// Every knob, with its default; what `--print-config` prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// The device registry (JSON file with Hono's record shapes). Required.
    pub(crate) registry: Option<PathBuf>,
    /// DTLS-PSK listener.
    pub(crate) dtls: SocketAddr,
    /// Plain UDP listener for unauthenticated devices; off unless set.
    pub(crate) insecure_udp: Option<SocketAddr>,
    /// RabbitMQ; without it telemetry and events go to stdout as JSON lines.
    pub(crate) amqp: Option<SecretUrl>,
    /// Exchange name prefix.
    pub(crate) exchange_prefix: String,
    /// Largest accepted request body.
    pub(crate) max_payload_size: ByteSize,
    /// Default `timeoutToAck` (tenants may override it).
    pub(crate) timeout_to_ack: TimeoutToAck,
    /// How often the registry file is checked for changes.
    pub(crate) registry_poll_interval: HumanDuration,
    /// How long a confirmed publish waits for the broker.
    pub(crate) confirm_timeout: HumanDuration,
    /// Separator of auth-id and tenant in PSK identities.
    pub(crate) psk_separator: char,
    /// RFC 7252 ACK_TIMEOUT of the gateway's own confirmable messages.
    pub(crate) ack_timeout: HumanDuration,
    /// RFC 7252 ACK_RANDOM_FACTOR.
    pub(crate) ack_random_factor: f64,
    /// RFC 7252 MAX_RETRANSMIT.
    pub(crate) max_retransmit: u32,
    /// An established DTLS session silent this long is closed.
    pub(crate) dtls_idle_timeout: HumanDuration,
    /// How long in-flight requests may take after SIGINT/SIGTERM.
    pub(crate) shutdown_grace: HumanDuration,
    /// Capacity of the table of known clients (management API).
    pub(crate) max_clients: usize,
    /// Metrics/health/management HTTP server; off unless set.
    pub(crate) http: Option<SocketAddr>,
    /// Log level or filter.
    pub(crate) log: Option<String>,
    /// Log line format.
    pub(crate) log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            registry: None,
            dtls: ([0, 0, 0, 0], 5684).into(),
            insecure_udp: None,
            amqp: None,
            exchange_prefix: "hono".to_owned(),
            max_payload_size: ByteSize(2048),
            timeout_to_ack: TimeoutToAck(500),
            registry_poll_interval: HumanDuration(std::time::Duration::from_secs(1)),
            confirm_timeout: HumanDuration(std::time::Duration::from_secs(2)),
            psk_separator: '@',
            ack_timeout: HumanDuration(Duration::from_secs(2)),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            dtls_idle_timeout: HumanDuration(Duration::from_secs(600)),
            shutdown_grace: HumanDuration(std::time::Duration::from_secs(5)),
            max_clients: hono_coap::DEFAULT_MAX_CLIENTS,
            http: None,
            log: None,
            log_format: LogFormat::Text,
        }
    }
}

/// Eclipse-Hono-compatible CoAP adapter: devices send telemetry and events
/// over CoAP (DTLS-PSK, optionally plain UDP) and receive commands; the
/// north-bound side is RabbitMQ (AMQP 0-9-1).
///
/// Every flag can also be set as COAP_HONO_<FLAG> (e.g. COAP_HONO_AMQP) or
/// in the TOML file given with --config (keys as the flags, with `_`);
/// flags win over the environment, which wins over the file.
#[derive(Debug, clap::Parser, Serialize)]
#[command(name = "coap-hono-adapter", version)]
pub(crate) struct Cli {
    /// Device registry: JSON file with Hono's tenant, device and credentials
    /// records. Reloaded on SIGHUP and when the file changes. Required.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registry: Option<PathBuf>,
    /// DTLS-PSK listener address [default: 0.0.0.0:5684]; port 0 picks one.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dtls: Option<SocketAddr>,
    /// Plain-UDP listener for unauthenticated devices (PUT /t/TENANT/DEVICE).
    /// Off unless given.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) insecure_udp: Option<SocketAddr>,
    /// RabbitMQ URL, amqp://USER:PASS@HOST:PORT/VHOST (amqps:// for TLS;
    /// the password is never logged or printed). Without it, telemetry and
    /// events are printed to stdout as JSON lines and commands are off.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) amqp: Option<SecretUrl>,
    /// Prefix of the exchanges ({prefix}.telemetry, .event, .command,
    /// .command_response); instances that share a prefix on one RabbitMQ
    /// cluster share commands [default: hono].
    #[arg(long, value_name = "PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exchange_prefix: Option<String>,
    /// Largest accepted request body, e.g. 2048, 4KiB; larger gets 4.13
    /// (block-wise transfers included) [default: 2048].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_payload_size: Option<ByteSize>,
    /// When to send an empty ACK if the answer is not ready (tenants
    /// override it with adapters[].ext.timeoutToAck): e.g. 500ms, -1 =
    /// always piggy-back, 0 = ACK at once [default: 500ms].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_to_ack: Option<TimeoutToAck>,
    /// How often the registry file is checked for changes (it is also
    /// reloaded on SIGHUP); a file that does not parse keeps the previous
    /// registry [default: 1s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registry_poll_interval: Option<HumanDuration>,
    /// How long a CON telemetry or event waits for RabbitMQ's publisher
    /// confirm before the device gets 5.03 [default: 2s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) confirm_timeout: Option<HumanDuration>,
    /// Character between auth-id and tenant in a PSK identity
    /// (`sensor1@DEFAULT_TENANT`) [default: @].
    #[arg(long, value_name = "CHAR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) psk_separator: Option<char>,
    /// RFC 7252 ACK_TIMEOUT: how long the adapter waits for the ACK of its
    /// own confirmable messages (separate responses after an empty ACK)
    /// before the first retransmission, e.g. 2s, 300ms [default: 2s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ack_timeout: Option<HumanDuration>,
    /// RFC 7252 ACK_RANDOM_FACTOR: the first timeout is drawn from
    /// [ack-timeout, ack-timeout × factor]; from 1 to 10 [default: 1.5].
    #[arg(long, value_name = "FACTOR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ack_random_factor: Option<f64>,
    /// RFC 7252 MAX_RETRANSMIT: retransmissions of a confirmable message
    /// (at most 20; the timeout doubling each time) before the adapter gives up
    /// [default: 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=20))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_retransmit: Option<u32>,
    /// How long an established DTLS session may stay silent before it is
    /// closed and its memory freed: sessions orphaned by a NAT rebinding,
    /// devices gone for good. A device that sends again after it must
    /// handshake again. From 10s to 7d [default: 10m].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dtls_idle_timeout: Option<HumanDuration>,
    /// After SIGINT/SIGTERM: how long in-flight requests may still take
    /// before the process exits anyway [default: 5s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shutdown_grace: Option<HumanDuration>,
    /// Most clients the management API's table holds (the longest idle is
    /// dropped from the table when full; the device is not affected)
    /// [default: 100000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_clients: Option<usize>,
    /// Operations flags.
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) ops: OpsArgs,
}

/// `timeoutToAck` in milliseconds: `-1`, `0`, `500ms`, `2s` or a bare
/// number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeoutToAck(pub(crate) i64);

impl FromStr for TimeoutToAck {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(ms) = s.parse::<i64>() {
            return Ok(Self(if ms < 0 { -1 } else { ms }));
        }
        let duration = HumanDuration::from_str(s).map_err(|e| e.to_string())?;
        i64::try_from(duration.get().as_millis())
            .map(Self)
            .map_err(|_| format!("timeout {s:?} is too large"))
    }
}

impl fmt::Display for TimeoutToAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 <= 0 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

impl Serialize for TimeoutToAck {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for TimeoutToAck {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(ms) => Ok(Self(ms.max(-1))),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Config {
    /// ACK_TIMEOUT, ACK_RANDOM_FACTOR and MAX_RETRANSMIT, or a one-line
    /// error naming the key (they may come from the file or the
    /// environment, which clap does not check).
    pub(crate) fn transmission(&self) -> Result<Transmission, String> {
        Transmission::checked(
            self.ack_timeout.get(),
            self.ack_random_factor,
            self.max_retransmit,
        )
    }

    /// The DTLS idle timeout, or a one-line error naming the key.
    pub(crate) fn dtls_idle_timeout(&self) -> Result<Duration, String> {
        checked_dtls_idle_timeout(self.dtls_idle_timeout.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_to_ack_forms() {
        for (text, ms) in [
            ("-1", -1),
            ("-5", -1),
            ("0", 0),
            ("500", 500),
            ("500ms", 500),
            ("2s", 2000),
        ] {
            assert_eq!(text.parse::<TimeoutToAck>().unwrap().0, ms, "{text}");
        }
        assert!("soon".parse::<TimeoutToAck>().is_err());
        assert_eq!(TimeoutToAck(500).to_string(), "500ms");
        assert_eq!(TimeoutToAck(-1).to_string(), "-1");
        let config: Config = toml::from_str("timeout_to_ack = -1").unwrap();
        assert_eq!(config.timeout_to_ack.0, -1);
        let config: Config = toml::from_str("timeout_to_ack = \"1s\"").unwrap();
        assert_eq!(config.timeout_to_ack.0, 1000);
    }

    #[test]
    fn message_layer_settings_from_the_file() {
        // The checks themselves: gateway_kit::transmission's tests.
        let config: Config = toml::from_str("").unwrap();
        let t = config.transmission().unwrap();
        assert_eq!(
            (t.ack_timeout, t.ack_random_factor, t.max_retransmit),
            (Duration::from_secs(2), 1.5, 4)
        );
        assert_eq!(config.dtls_idle_timeout(), Ok(Duration::from_secs(600)));
        let config: Config = toml::from_str(
            "ack_timeout = \"100ms\"\nack_random_factor = 1.0\nmax_retransmit = 2\ndtls_idle_timeout = \"30s\"",
        )
        .unwrap();
        let t = config.transmission().unwrap();
        assert_eq!(
            (t.ack_timeout, t.ack_random_factor, t.max_retransmit),
            (Duration::from_millis(100), 1.0, 2)
        );
        assert_eq!(config.dtls_idle_timeout(), Ok(Duration::from_secs(30)));
        let config: Config =
            toml::from_str("ack_random_factor = 0.9\ndtls_idle_timeout = \"9s\"").unwrap();
        assert!(
            config
                .transmission()
                .unwrap_err()
                .starts_with("ack_random_factor")
        );
        assert!(
            config
                .dtls_idle_timeout()
                .unwrap_err()
                .starts_with("dtls_idle_timeout")
        );
        assert!(toml::from_str::<Config>("max_retransmit = -1").is_err());
    }
}
