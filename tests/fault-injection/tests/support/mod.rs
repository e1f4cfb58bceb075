//! Helpers shared by several fault-injection test files.

use std::path::Path;

use fault_injection_tests::GatewayProcess;

/// Starts `coap-hono-adapter` with `registry`, DTLS on a free loopback
/// port, RabbitMQ at `amqp` under exchange prefix `prefix`, plus the
/// insecure UDP port if `listeners` has `"udp"` and the HTTP port if it has
/// `"http"`; waits for the listening lines of `listeners`.
pub(crate) fn hono_adapter(
    registry: &Path,
    amqp: &str,
    prefix: &str,
    listeners: &[&str],
) -> GatewayProcess {
    let mut args = vec![
        "--registry",
        registry.to_str().unwrap(),
        "--dtls",
        "127.0.0.1:0",
    ];
    if listeners.contains(&"udp") {
        args.extend(["--insecure-udp", "127.0.0.1:0"]);
    }
    args.extend(["--amqp", amqp, "--exchange-prefix", prefix]);
    if listeners.contains(&"http") {
        args.extend(["--http", "127.0.0.1:0"]);
    }
    GatewayProcess::start("coap-hono-adapter", &args, listeners)
}
