#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
use coap_endpoint::coap_codec::{Code, MessageType};
use fault_injection_tests::{CoapClient, GatewayProcess};

/// Devices behind one NAT address: stale tokens from one of them (tokens of
/// sessions that no longer exist, as after a heartbeat expiry while the
/// device slept) must not lock the other devices at that address out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_from_one_device_do_not_lock_out_its_nat_neighbours() {
    let gw = GatewayProcess::start(
        "coap-emqx-gateway",
        &["--udp", "127.0.0.1:0", "--connection-required"],
        &["udp"],
    );
    let server = gw.addr("udp");
    let good = CoapClient::new_from("127.0.0.3:0", server).await;
    let r = good
        .request(good.build(
            MessageType::Con,
            Code::POST,
            "mqtt/connection",
            &["clientid=good"],
        ))
        .await;
    assert_eq!(r.code(), Some(Code::CREATED));
    let token = String::from_utf8(r.response.unwrap().payload.to_vec()).unwrap();
    // a neighbour at the same address with stale tokens
    let stale = CoapClient::new_from("127.0.0.3:0", server).await;
    for i in 0..10 {
        let m = stale.build(
            MessageType::Con,
            Code::PUT,
            "mqtt/connection",
            &[&format!("clientid=sleeper{i}"), "token=12345"],
        );
        let _ = stale.request(m).await;
    }
    let m = good.build(
        MessageType::Con,
        Code::PUT,
        "mqtt/connection",
        &["clientid=good", &format!("token={token}")],
    );
    assert_eq!(
        good.request(m).await.code(),
        Some(Code::CHANGED),
        "the good device is locked out"
    );
}
