//! Real QUIC connections on 127.0.0.1: the handshake with right and wrong credentials, a pinned
//! fingerprint, and blocks streamed through a framed stream.

// In a test, a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tickship_net::frame::{split_blocks, BLOCKS_BYTES_MAX};
use tickship_net::scram::{salted_password, StoredCredential};
use tickship_net::session::{self, FollowerSide, LeaderSide};
use tickship_net::transport::{client_endpoint, connect, server_endpoint};
use tickship_net::{Ack, Control, Error, FramedStream, Identity, Kind, Tail};

const T: Duration = Duration::from_secs(10);

fn credential(password: &str) -> StoredCredential {
    let salt = b"salt-of-the-test".to_vec();
    StoredCredential {
        salted_password: salted_password(password, &salt, 4096),
        salt,
        iterations: 4096,
    }
}

/// A leader accepting one follower; returns what the leader saw.
async fn leader(endpoint: quinn::Endpoint) -> Result<(String, Vec<u64>), Error> {
    let incoming = endpoint.accept().await.expect("a connection");
    let connection = incoming
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    let (send, recv) = connection
        .accept_bi()
        .await
        .map_err(|e| Error::Transport(e.to_string()))?;
    let mut stream = FramedStream::new(send, recv, BLOCKS_BYTES_MAX);
    let lookup = |name: &str| (name == "root").then(|| credential("secret"));
    let side = LeaderSide {
        server_id: "111",
        credentials: Some(&lookup),
        database_exists: &|db| db == "_system",
        log_range: &|| (1, 3),
    };
    let (hello, user) = session::accept(&connection, &mut stream, &side).await?;
    let tail: Tail = stream.recv_message(T).await?;
    let (mut sender, mut receiver) = stream.split();
    sender
        .send_blocks(
            3,
            vec![
                Bytes::from_static(b"block-one"),
                Bytes::from_static(b"block-two"),
            ],
        )
        .await?;
    let ack: Ack = Ack::from_frame(&receiver.recv(T).await?)?;
    sender.finish();
    Ok((
        format!("{}/{}/{}", hello.server_id, user, hello.database),
        vec![tail.from, ack.durable],
    ))
}

async fn pair(
    password: &str,
    pin: Option<String>,
) -> (Result<(String, Vec<u64>), Error>, Result<(), Error>) {
    let socket = tickship_net::transport::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    pair_on(socket, password, pin).await
}

/// `pair` with the leader on `socket`.
async fn pair_on(
    socket: std::net::UdpSocket,
    password: &str,
    pin: Option<String>,
) -> (Result<(String, Vec<u64>), Error>, Result<(), Error>) {
    let identity = Identity::generate(vec!["localhost".into()]).unwrap();
    let fingerprint = pin.unwrap_or_else(|| identity.fingerprint());
    let endpoint = server_endpoint(socket, &identity).unwrap();
    let addr: SocketAddr = endpoint.local_addr().unwrap();
    let leader = tokio::spawn(leader(endpoint));
    let follower = async {
        let (client, config) = client_endpoint(addr, Some(&fingerprint), 4 << 20)?;
        let connection = connect(&client, &config, addr, T).await?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        let mut stream = FramedStream::new(send, recv, BLOCKS_BYTES_MAX);
        let side = FollowerSide {
            server_id: "222",
            database: "_system",
            client_info: "test",
            username: "root",
            password,
        };
        let (leader_id, welcome) = session::connect(&connection, &mut stream, &side).await?;
        assert_eq!(leader_id, "111");
        assert_eq!((welcome.first_tick, welcome.last_tick), (1, 3));
        stream
            .send(&Tail {
                from: 0,
                chunk_bytes: 0,
            })
            .await?;
        let frame = stream.recv(T).await?;
        assert_eq!(frame.kind, Kind::Blocks);
        let (last, blocks) = split_blocks(frame.payload)?;
        assert_eq!(last, 3);
        assert_eq!(
            blocks,
            vec![
                Bytes::from_static(b"block-one"),
                Bytes::from_static(b"block-two")
            ]
        );
        stream
            .send(&Ack {
                durable: 3,
                applied: 2,
            })
            .await?;
        // Wait for the leader to finish its side before the connection is dropped.
        let _ = stream.recv(T).await;
        Ok(())
    }
    .await;
    let leader = match tokio::time::timeout(T, leader).await {
        Ok(joined) => joined.unwrap(),
        Err(_) => Err(Error::Transport("leader timed out".into())),
    };
    (leader, follower)
}

#[tokio::test]
async fn follower_with_the_right_password_gets_blocks() {
    let (leader, follower) = pair("secret", None).await;
    follower.unwrap();
    let (seen, ticks) = leader.unwrap();
    assert_eq!(seen, "222/root/_system");
    assert_eq!(ticks, vec![0, 3]);
}

// Goal: a leader on an IPv6 address is reached (the follower's socket was IPv4 only).
#[tokio::test]
async fn a_leader_on_ipv6_loopback_is_reached() {
    let Ok(socket) = tickship_net::transport::bind_udp("[::1]:0".parse().unwrap()) else {
        eprintln!("no IPv6 loopback on this machine: nothing to check");
        return;
    };
    let (leader, follower) = pair_on(socket, "secret", None).await;
    follower.unwrap();
    let (seen, ticks) = leader.unwrap();
    assert_eq!(seen, "222/root/_system");
    assert_eq!(ticks, vec![0, 3]);
}

#[tokio::test]
async fn wrong_password_is_refused_on_both_sides() {
    let (leader, follower) = pair("guess", None).await;
    let err = follower.unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err}");
    assert!(
        err.to_string().contains("wrong username or password"),
        "{err}"
    );
    assert!(matches!(leader.unwrap_err(), Error::Auth(_)));
}

#[tokio::test]
async fn wrong_pinned_fingerprint_is_refused() {
    let (_leader, follower) = pair("secret", Some("00".repeat(32))).await;
    let err = follower.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert!(err.to_string().contains("not the pinned"), "{err}");
}
