#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! The example authentication file shipped in `examples/` loads and works.

use std::path::Path;

use emqx_coap::auth::{Action, AuthError, AuthFile, Requester};

#[test]
fn example_auth_file_loads_authenticates_and_authorizes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/auth.toml");
    let auth = AuthFile::load(&path).unwrap();
    assert_eq!(auth.user_count(), 2);
    assert_eq!(auth.authenticate("alice", "wonderland"), Ok(()));
    assert_eq!(auth.authenticate("bob", "builder"), Ok(()));
    assert_eq!(
        auth.authenticate("bob", "wonderland"),
        Err(AuthError::BadPassword)
    );

    let bob = Requester {
        clientid: Some("sensor-7"),
        username: Some("bob"),
    };
    assert!(auth.authorize(bob, Action::Publish, "devices/sensor-7/temp"));
    assert!(!auth.authorize(bob, Action::Publish, "devices/sensor-7/config/secret"));
    assert!(auth.authorize(bob, Action::Subscribe, "broadcast/#"));
    assert!(auth.authorize(bob, Action::Publish, "telemetry/bob/t"));
    let alice = Requester {
        clientid: Some("a-1"),
        username: Some("alice"),
    };
    assert!(!auth.authorize(alice, Action::Publish, "telemetry/alice/t"));
    assert!(!auth.authorize(alice, Action::Publish, "devices/sensor-7/temp"));
}
