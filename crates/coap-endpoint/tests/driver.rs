#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
//! The tokio driver over loopback UDP: handlers, answering later, the
//! handle (requests, notifications), events and graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use coap_endpoint::coap_codec::{Code, Message, MessageType};
use coap_endpoint::server::ServerEvent;
use coap_endpoint::{
    AckTimeout, CancelReason, EndpointConfig, IncomingRequestHandle, Peer, Server, response,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn recv(socket: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("a datagram within 5 s")
        .unwrap();
    buf.truncate(n);
    Message::from_bytes(buf.into()).unwrap()
}

async fn echo(request: IncomingRequestHandle) {
    let reply = response(Code::CONTENT).with_payload(request.message.payload.clone());
    let _ = request.responder.respond(reply).await;
}

#[tokio::test]
async fn handle_request_between_two_servers() {
    let a = Server::bind(local(), EndpointConfig::default())
        .await
        .unwrap();
    let a_addr = a.local_addr().unwrap();
    let (stop_a, stopped_a) = oneshot::channel::<()>();
    let task_a = tokio::spawn(a.run(echo, async move {
        let _ = stopped_a.await;
    }));

    let b = Server::bind(local(), EndpointConfig::default())
        .await
        .unwrap();
    let handle_b = b.handle();
    let (stop_b, stopped_b) = oneshot::channel::<()>();
    let task_b = tokio::spawn(b.run(echo, async move {
        let _ = stopped_b.await;
    }));

    for confirmable in [true, false] {
        let request = Message::new(MessageType::Con, Code::POST, 0)
            .with_uri_path("x")
            .with_payload(vec![7u8; 3000]); // block-wise both ways
        let reply = handle_b
            .request(Peer::new(a_addr), request, confirmable)
            .await
            .unwrap();
        assert_eq!(reply.code, Code::CONTENT);
        assert_eq!(reply.payload.len(), 3000);
    }
    let stats = handle_b.stats().await.unwrap();
    assert!(stats.datagrams_out >= 6);
    stop_a.send(()).unwrap();
    stop_b.send(()).unwrap();
    task_a.await.unwrap().unwrap();
    task_b.await.unwrap().unwrap();
}

#[tokio::test]
async fn answer_later_with_immediate_ack_and_observe_events() {
    let mut server = Server::bind(local(), EndpointConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    let mut events = server.events();
    let (requests_tx, mut requests_rx) = mpsc::channel(8);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_with_channel(requests_tx, async move {
        let _ = stopped.await;
    }));

    let client = UdpSocket::bind(local()).await.unwrap();
    client.connect(addr).await.unwrap();

    // Separate response: ACK at once, answer later from another task.
    let get = Message::new(MessageType::Con, Code::GET, 100)
        .with_token(&b"s1"[..])
        .with_uri_path("later");
    client.send(&get.to_bytes().unwrap()).await.unwrap();
    let request = requests_rx.recv().await.unwrap();
    request.responder.set_ack_timeout(AckTimeout::Immediately);
    let ack = recv(&client).await;
    assert_eq!(ack, Message::empty_ack(100));
    tokio::spawn(async move {
        request
            .responder
            .respond(response(Code::CONTENT).with_payload(&b"later"[..]))
            .await
            .unwrap();
    });
    let separate = recv(&client).await;
    assert_eq!(separate.mtype, MessageType::Con);
    assert_eq!(&separate.payload[..], b"later");
    assert_eq!(&separate.token[..], b"s1");
    client
        .send(&Message::empty_ack(separate.message_id).to_bytes().unwrap())
        .await
        .unwrap();

    // Observe: register, notify through the handle, RST → event.
    let reg = Message::new(MessageType::Con, Code::GET, 101)
        .with_token(&b"ob"[..])
        .with_uri_path("obs")
        .with_observe(0);
    client.send(&reg.to_bytes().unwrap()).await.unwrap();
    let request = requests_rx.recv().await.unwrap();
    assert!(request.observe_registration);
    let relation = request
        .responder
        .respond(response(Code::CONTENT).with_observe(0))
        .await
        .unwrap()
        .unwrap();
    let first = recv(&client).await;
    assert_eq!(first.mtype, MessageType::Ack);
    handle
        .notify(
            relation,
            response(Code::CONTENT).with_payload(&b"n1"[..]),
            true,
        )
        .await
        .unwrap();
    let n1 = recv(&client).await;
    assert_eq!(&n1.payload[..], b"n1");
    assert!(n1.observe().unwrap() > first.observe().unwrap());
    client
        .send(&Message::reset(n1.message_id).to_bytes().unwrap())
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        ServerEvent::ObserveCancelled {
            relation,
            peer: Peer::new(client.local_addr().unwrap()),
            reason: CancelReason::Reset,
        }
    );
    assert!(
        handle
            .notify(relation, response(Code::CONTENT), false)
            .await
            .is_err()
    );

    // Dropping a responder unanswered sends 5.00.
    let get = Message::new(MessageType::Con, Code::GET, 102).with_token(&b"dr"[..]);
    client.send(&get.to_bytes().unwrap()).await.unwrap();
    drop(requests_rx.recv().await.unwrap());
    let reply = recv(&client).await;
    assert_eq!(reply.code, Code::INTERNAL_SERVER_ERROR);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_answers_in_flight_requests_first() {
    let server = Server::bind(local(), EndpointConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (started_tx, started_rx) = mpsc::channel::<()>(1);
    let handler = move |request: IncomingRequestHandle| {
        let started = started_tx.clone();
        async move {
            let _ = started.send(()).await;
            tokio::time::sleep(Duration::from_millis(300)).await; // a slow application, not a protocol timer
            let _ = request
                .responder
                .respond(response(Code::CHANGED).with_payload(&b"done"[..]))
                .await;
        }
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.with_shutdown_grace(Duration::from_secs(5)).run(
        handler,
        async move {
            let _ = stopped.await;
        },
    ));
    let client = UdpSocket::bind(local()).await.unwrap();
    client.connect(addr).await.unwrap();
    let post = Message::new(MessageType::Con, Code::POST, 5).with_token(&b"sd"[..]);
    client.send(&post.to_bytes().unwrap()).await.unwrap();
    let mut started_rx = started_rx;
    started_rx.recv().await.unwrap();
    stop.send(()).unwrap();
    let reply = recv(&client).await;
    assert_eq!(&reply.payload[..], b"done", "answered before exit");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A transport of our own: the trait is implementable outside the crate,
/// and a transport that fails for good ends `run` with its error instead
/// of spinning.
struct BrokenTransport;

impl coap_endpoint::Transport for BrokenTransport {
    async fn recv(&self, _buf: &mut [u8]) -> std::io::Result<(usize, Peer)> {
        Err(std::io::Error::other("driver stopped"))
    }

    async fn send(&self, _peer: &Peer, _bytes: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(local())
    }
}

#[tokio::test]
async fn a_failed_transport_ends_run_with_its_error() {
    let server = Server::new(BrokenTransport, EndpointConfig::default()).unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        server.run(echo, std::future::pending::<()>()),
    )
    .await
    .expect("run returns instead of spinning");
    assert_eq!(result.unwrap_err().to_string(), "driver stopped");
}
