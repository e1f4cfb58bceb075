//! The command line and the typed configuration (flags > `COAP_EMQX_*`
//! environment > TOML file > defaults).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gateway_kit::transmission::{Transmission, checked_dtls_idle_timeout};
use gateway_kit::{ByteSize, HumanDuration, LogFormat, OpsArgs, Redact};
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables (`COAP_EMQX_BROKER`, ...).
pub(crate) const ENV_PREFIX: &str = "COAP_EMQX";

/// Every knob, with its default; what `--print-config` prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// Plain-UDP CoAP listener.
    pub(crate) udp: SocketAddr,
    /// DTLS-PSK listener; off unless set.
    pub(crate) dtls: Option<SocketAddr>,
    /// `identity:secret` lines for DTLS.
    pub(crate) psk_file: Option<PathBuf>,
    /// `embedded`, `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub(crate) broker: String,
    /// `shared` or `per-client`.
    pub(crate) mqtt_session: String,
    /// `5` or `3.1.1`.
    pub(crate) mqtt_version: String,
    /// Username of the shared MQTT connections.
    pub(crate) mqtt_username: Option<String>,
    /// Password of the shared MQTT connections.
    pub(crate) mqtt_password: Option<Redact<String>>,
    /// Connection mode.
    pub(crate) connection_required: bool,
    /// Heartbeat interval of connection-mode sessions.
    pub(crate) heartbeat: HumanDuration,
    /// `qos`, `con` or `non`.
    pub(crate) notify_type: String,
    /// `coap`, `qos0`, `qos1` or `qos2`.
    pub(crate) publish_qos: String,
    /// `coap`, `qos0`, `qos1` or `qos2`.
    pub(crate) subscribe_qos: String,
    /// Topic prefix with `${clientid}` / `${username}`.
    pub(crate) mountpoint: String,
    /// Authentication and ACL file (TOML).
    pub(crate) auth_file: Option<PathBuf>,
    /// Block size of block-wise transfers.
    pub(crate) max_block_size: ByteSize,
    /// Largest request body (Block1 reassembled) and publish payload.
    pub(crate) max_body_size: ByteSize,
    /// CON notifications waiting per device behind the one in flight.
    pub(crate) max_queued_notifications: usize,
    /// Remember successful per-request authentications this long; none =
    /// verify the hash on every request.
    pub(crate) auth_cache_ttl: Option<HumanDuration>,
    /// Idle lifetime of connectionless observers; none = unlimited.
    pub(crate) observe_idle_lifetime: Option<HumanDuration>,
    /// Node name for `$SYS/brokers/<node>/gateway/coap/clients/...` events.
    pub(crate) presence_node: Option<String>,
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
    /// Metrics/health HTTP server; off unless set.
    pub(crate) http: Option<SocketAddr>,
    /// Log level or filter.
    pub(crate) log: Option<String>,
    /// Log line format.
    pub(crate) log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            udp: ([0, 0, 0, 0], 5683).into(),
            dtls: None,
            psk_file: None,
            broker: "embedded".to_owned(),
            mqtt_session: "shared".to_owned(),
            mqtt_version: "5".to_owned(),
            mqtt_username: None,
            mqtt_password: None,
            connection_required: false,
            heartbeat: HumanDuration(Duration::from_secs(30)),
            notify_type: "qos".to_owned(),
            publish_qos: "coap".to_owned(),
            subscribe_qos: "coap".to_owned(),
            mountpoint: String::new(),
            auth_file: None,
            max_block_size: ByteSize(1024),
            max_body_size: ByteSize(4 * 1024 * 1024),
            max_queued_notifications: 100,
            auth_cache_ttl: None,
            observe_idle_lifetime: None,
            presence_node: None,
            ack_timeout: HumanDuration(Duration::from_secs(2)),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            dtls_idle_timeout: HumanDuration(Duration::from_secs(600)),
            shutdown_grace: HumanDuration(Duration::from_secs(5)),
            http: None,
            log: None,
            log_format: LogFormat::Text,
        }
    }
}

/// EMQX-compatible CoAP pub/sub gateway: devices publish with
/// `POST ps/{topic}` and subscribe with `GET ps/{topic}` + Observe; the
/// `mqtt/connection` resource gives connection-mode sessions. Broker:
/// embedded (default) or an external MQTT broker.
///
/// Every flag can also be set as `COAP_EMQX_<FLAG>` (e.g. `COAP_EMQX_BROKER`)
/// or in the TOML file given with --config (keys as the flags, with `_`).
#[derive(Debug, clap::Parser, Serialize)]
#[command(name = "coap-emqx-gateway", version)]
pub(crate) struct Cli {
    /// Plain-UDP CoAP listener [default: 0.0.0.0:5683]; port 0 picks one.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) udp: Option<SocketAddr>,
    /// DTLS-PSK (coaps) listener, e.g. 0.0.0.0:5684; needs --psk-file
    /// [default: off].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dtls: Option<SocketAddr>,
    /// DTLS keys: one `identity:secret` per line, `#` comments; write
    /// `identity:hex:0a1b...` for a binary key. The identity is the
    /// clientid of requests that give none. Required with --dtls
    /// [default: none].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) psk_file: Option<PathBuf>,
    /// Broker: `embedded` (in-process), `mqtt://HOST:PORT` or
    /// `mqtts://HOST:PORT` [default: embedded].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker: Option<String>,
    /// MQTT session model: `shared` (a small pool of gateway connections)
    /// or `per-client` (one MQTT connection per CoAP clientid, with its
    /// username/password) [default: shared].
    #[arg(long, value_name = "MODEL", value_parser = ["shared", "per-client"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mqtt_session: Option<String>,
    /// MQTT protocol version: `5` or `3.1.1` (3.1.1 publishes a device's
    /// QoS 2 as QoS 1; see docs/emqx-mode.md) [default: 5].
    #[arg(long, value_name = "VERSION", value_parser = ["5", "3.1.1"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mqtt_version: Option<String>,
    /// MQTT username of the shared gateway connections
    /// (`--mqtt-session shared`) [default: none].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mqtt_username: Option<String>,
    /// MQTT password of the shared gateway connections; never logged,
    /// printed as "***" by --print-config [default: none].
    #[arg(
        long,
        value_name = "SECRET",
        env = "COAP_EMQX_MQTT_PASSWORD",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mqtt_password: Option<String>,
    /// Connection mode: devices POST mqtt/connection first and send
    /// clientid + token with every request (4.00 without, 4.01 with a wrong
    /// token) [default: off: connectionless, clientid optional].
    #[arg(long)]
    pub(crate) connection_required: bool,
    /// Heartbeat interval (e.g. 30s, 2m); a connection-mode session
    /// without a request for 1.5 × this expires with its subscriptions
    /// [default: 30s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) heartbeat: Option<HumanDuration>,
    /// Notification type: `qos` (QoS 0 → NON, QoS ≥ 1 → CON), `con` or
    /// `non` [default: qos].
    #[arg(long, value_name = "TYPE", value_parser = ["qos", "con", "non"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) notify_type: Option<String>,
    /// Publish QoS when the request has no `qos`: `coap` (CON → 1,
    /// NON → 0), `qos0`, `qos1`, `qos2` [default: coap].
    #[arg(long, value_name = "POLICY", value_parser = ["coap", "qos0", "qos1", "qos2"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) publish_qos: Option<String>,
    /// Subscription QoS when the observe has no `qos` (same values)
    /// [default: coap].
    #[arg(long, value_name = "POLICY", value_parser = ["coap", "qos0", "qos1", "qos2"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) subscribe_qos: Option<String>,
    /// Topic prefix for publish and subscribe, with `${clientid}` and
    /// `${username}` placeholders, e.g. `devices/${clientid}/`; devices
    /// never see it [default: none].
    #[arg(long, value_name = "STR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mountpoint: Option<String>,
    /// Users (argon2/bcrypt password hashes) and ACL rules, TOML; with it
    /// every request must authenticate and the ACL decides (deny when no
    /// rule applies) [default: none: anonymous requests, no ACL].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_file: Option<PathBuf>,
    /// Block size (SZX) for block-wise responses and notifications: a
    /// power of two from 16 to 1024 [default: 1024].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_block_size: Option<ByteSize>,
    /// Largest request body (also reassembled from Block1) and publish
    /// payload; larger gets 4.13. Units B, KiB, MiB [default: 4MiB].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_body_size: Option<ByteSize>,
    /// CON notifications that wait per device while one is in flight; when
    /// full, the oldest is dropped (counted in coap_queue_drops_total). A
    /// newer notification of the same observation replaces its queued one
    /// [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_queued_notifications: Option<u32>,
    /// Remember a successful connectionless login (password hash check)
    /// this long, e.g. 1m [default: none: check every request].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_cache_ttl: Option<HumanDuration>,
    /// End a connectionless observer that has not been refreshed for this
    /// long, e.g. 1h [default: none: unlimited].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) observe_idle_lifetime: Option<HumanDuration>,
    /// Node name: publish client connected/disconnected events to
    /// `$SYS/brokers/<node>/gateway/coap/clients/<clientid>/...`
    /// [default: none: no events].
    #[arg(long, value_name = "NODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) presence_node: Option<String>,
    /// RFC 7252 ACK_TIMEOUT: how long the gateway waits for the ACK of its
    /// own confirmable messages (CON notifications, separate responses)
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
    /// (at most 20; the timeout doubling each time) before the gateway gives up; an
    /// observer whose CON notification is given up loses its relation and
    /// subscription [default: 4].
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
    /// [default: 5s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shutdown_grace: Option<HumanDuration>,
    /// Operations flags.
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) ops: OpsArgs,
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
    fn defaults_and_file_values() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config.udp, SocketAddr::from(([0, 0, 0, 0], 5683)));
        assert_eq!(config.broker, "embedded");
        assert_eq!(config.heartbeat.get(), Duration::from_secs(30));
        assert_eq!(config.max_body_size.bytes(), 4 * 1024 * 1024);
        let config: Config = toml::from_str(
            "heartbeat = \"1s\"\nconnection_required = true\nmax_body_size = \"1KiB\"\nmqtt_password = \"pw\"",
        )
        .unwrap();
        assert_eq!(config.heartbeat.get(), Duration::from_secs(1));
        assert!(config.connection_required);
        assert_eq!(config.max_body_size.bytes(), 1024);
        assert_eq!(config.mqtt_password.unwrap().expose(), "pw");
        assert!(toml::from_str::<Config>("nonsense = 1").is_err());
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
