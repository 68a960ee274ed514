//! The leader's side of replication: a QUIC listener and one shipper task per follower, which
//! streams durable WAL blocks verbatim from a tick (net/PROTOCOL.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use tickship_net::frame::{Frame, Kind, BLOCKS_BYTES_MAX};
use tickship_net::session::{self, LeaderSide};
use tickship_net::stream::{BlockSpan, LeaderStream, Offer, IDLE_EVERY};
use tickship_net::transport::server_endpoint;
use tickship_net::{
    errors, Ack, Close, Control, Error as NetError, FramedStream, Identity, Idle, Tail,
};
use tickship_storage::Tick;

use crate::auth::Auth;
use crate::leader::followers::Clients;
use crate::node::Node;

/// Default and largest `Blocks` frame.
const CHUNK_DEFAULT: u64 = 4 << 20;
const CHUNK_MAX: u64 = 64 << 20;
/// How long a read of a follower's next control frame waits: in effect forever, as a silent
/// follower (no Ack, no keep-alive) is dropped by QUIC's idle timeout long before.
const FOLLOWER_SILENCE_MAX: Duration = Duration::from_secs(3600 * 24 * 365);

/// Loads the leader's TLS identity: the given PEM files, or the one in `DIR/tls/`, generated on
/// first start.
pub fn identity(dir: &Path, certfile: Option<&Path>, keyfile: Option<&Path>) -> Result<Identity> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
    };
    if let (Some(cert), Some(key)) = (certfile, keyfile) {
        return Identity::from_pem(&read(cert)?, &read(key)?)
            .context("--ssl.certfile/--ssl.keyfile");
    }
    if certfile.is_some() || keyfile.is_some() {
        anyhow::bail!("--ssl.certfile and --ssl.keyfile go together");
    }
    let tls = dir.join("tls");
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    if cert.exists() && key.exists() {
        return Identity::from_pem(&read(&cert)?, &read(&key)?)
            .with_context(|| format!("the certificate in {}", tls.display()));
    }
    std::fs::create_dir_all(&tls).with_context(|| format!("create {}", tls.display()))?;
    let identity = Identity::generate(vec!["tickship".into(), "localhost".into()])?;
    let (cert_pem, key_pem) = identity.to_pem();
    crate::util::write_private(&key, key_pem.as_bytes())?;
    crate::util::write_private(&cert, cert_pem.as_bytes())?;
    tracing::info!(
        "generated a TLS certificate for replication in {}",
        tls.display()
    );
    Ok(identity)
}

/// What every shipper shares.
pub struct Shipping {
    pub node: Arc<Node>,
    pub auth: Arc<Auth>,
    pub clients: Arc<Clients>,
    /// This leader's endpoint, as error messages name it.
    pub endpoint: String,
}

/// Listens for followers on `socket` (UDP, from `bind_udp`) until the endpoint is closed.
pub fn listen(
    socket: std::net::UdpSocket,
    identity: &Identity,
    shipping: Arc<Shipping>,
    runtime: &tokio::runtime::Handle,
) -> Result<tickship_net::quinn::Endpoint> {
    // The endpoint's driver and every session run on `runtime`.
    let endpoint = {
        let _entered = runtime.enter();
        server_endpoint(socket, identity)?
    };
    let accepting = endpoint.clone();
    runtime.spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let shipping = shipping.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match serve(incoming, shipping).await {
                    Ok(()) => tracing::info!(%remote, "follower session ended"),
                    Err(e) => tracing::info!(%remote, "follower session ended: {e}"),
                }
            });
        }
    });
    Ok(endpoint)
}

async fn serve(
    incoming: tickship_net::quinn::Incoming,
    shipping: Arc<Shipping>,
) -> Result<(), NetError> {
    let connection = incoming
        .await
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let (send, recv) = connection
        .accept_bi()
        .await
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let mut stream = FramedStream::new(send, recv, BLOCKS_BYTES_MAX);
    let node = &shipping.node;
    let lookup = |name: &str| shipping.auth.scram_credential(name);
    let exists = |db: &str| node.store.catalog().database(db).is_some();
    let range = || {
        (
            node.wal.first_tick().map_or(0, Tick::get),
            node.wal.last_tick().get(),
        )
    };
    let side = LeaderSide {
        server_id: &node.server_id,
        credentials: if shipping.auth.enabled() {
            Some(&lookup)
        } else {
            None
        },
        database_exists: &exists,
        log_range: &range,
    };
    let (hello, _user) = session::accept(&connection, &mut stream, &side).await?;
    let tail: Tail = stream.recv_message(session::HANDSHAKE_TIMEOUT).await?;
    let wal = node.wal.clone();
    let from = Tick::new(tail.from);
    let client_info = format!("{} ({})", hello.client_info, connection.remote_address());
    if !wal.contains_after(from)
        || shipping
            .clients
            .register(&wal, "", &hello.server_id, &client_info, from)
            .is_err()
    {
        let message = not_present(&shipping, &hello.server_id, tail.from);
        return Err(session::refuse(
            &connection,
            &mut stream,
            errors::START_TICK_NOT_PRESENT,
            message,
        )
        .await);
    }
    tracing::info!(follower = %hello.server_id, from = tail.from, "follower tailing");
    let chunk = match tail.chunk_bytes {
        0 => CHUNK_DEFAULT,
        n => n.min(CHUNK_MAX),
    } as usize;
    let (mut sender, mut receiver) = stream.split();
    // Which blocks go in which frame, when to say Idle and where a follower's barrier may move
    // are `LeaderStream`'s (net::stream, driven without I/O by its simulated tests); the ship
    // loop and the ack task do the I/O.
    let machine = Arc::new(std::sync::Mutex::new(LeaderStream::new(tail.from, chunk)));
    // Acks arrive independently of what is being sent.
    let ack_machine = machine.clone();
    let clients = shipping.clients.clone();
    let ack_wal = wal.clone();
    let follower_id = hello.server_id.clone();
    let acks = tokio::spawn(async move {
        loop {
            let frame: Frame = receiver.recv(FOLLOWER_SILENCE_MAX).await?;
            match frame.kind {
                Kind::Ack => {
                    let ack = Ack::from_frame(&frame)?;
                    // The barrier follows what the follower has stored durably (never past
                    // what it was sent).
                    let durable = ack_machine
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .on_ack(ack.durable);
                    let _ = clients.register_ack(
                        &ack_wal,
                        "",
                        &follower_id,
                        &client_info,
                        Tick::new(durable),
                        Some(Tick::new(ack.applied)),
                    );
                }
                Kind::Close => {
                    let close = Close::from_frame(&frame)?;
                    return Ok::<_, NetError>(close);
                }
                other => {
                    return Err(NetError::Protocol(format!(
                        "unexpected {other:?} from a follower"
                    )))
                }
            }
        }
    });
    let result = ship(&shipping, &hello.server_id, &machine, &mut sender, &acks).await;
    acks.abort();
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = sender
                .send(&Close {
                    error_num: e.error_num(),
                    error_message: e.to_string(),
                })
                .await;
            sender.finish();
            // Let the Close reach the follower before the connection goes: it closes on
            // reading it (dropped at once, the follower saw only "connection lost").
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
            Err(e)
        }
    }
}

/// ArangoDB's answer to a follower asking for a tick the log no longer holds (1414), and, if
/// the archive size limit took it while the follower was registered, when and why.
fn not_present(shipping: &Shipping, follower: &str, from: u64) -> String {
    let wal = &shipping.node.wal;
    let mut message = format!(
        "required initial tick value '{from}' is not present (anymore?) on leader at {}. Last \
         tick available on leader is '{}'. It may be required to do a full resync and increase \
         the number of historic logfiles/WAL file timeout or archive size on the leader.",
        shipping.endpoint,
        wal.last_tick()
    );
    if let Some(lost) = wal.lost_position(&Clients::id("", follower)) {
        message.push_str(&format!(
            " The leader removed this follower's position (tick '{}') at {} because its \
             archived WAL outgrew --wal.archive-size-limit.",
            lost.tick,
            crate::util::iso8601(lost.when)
        ));
    }
    message
}

/// What a follower at `sent` is told when the leader's log fails under its reader. Retention may
/// take ticks not yet sent while the follower is connected (the archive size limit does, or its
/// barrier expired while it stalled): that is the 1414 a reconnect would get, said now, so that
/// autoResync acts on it.
fn wal_error(
    shipping: &Shipping,
    follower: &str,
    sent: Tick,
    e: tickship_storage::Error,
) -> NetError {
    match e {
        tickship_storage::Error::TickCompacted(_) => NetError::Closed {
            error_num: errors::START_TICK_NOT_PRESENT,
            message: not_present(shipping, follower, sent.get()),
        },
        e => NetError::Closed {
            error_num: errors::LEADER_ERROR,
            message: format!("leader WAL: {e}"),
        },
    }
}

/// Streams blocks after the machine's position until the follower goes or the leader shuts
/// down.
async fn ship(
    shipping: &Shipping,
    follower: &str,
    machine: &std::sync::Mutex<LeaderStream>,
    sender: &mut tickship_net::transport::FrameSender,
    acks: &tokio::task::JoinHandle<Result<Close, NetError>>,
) -> Result<(), NetError> {
    let (wal, node) = (&shipping.node.wal, &*shipping.node);
    let machine = || machine.lock().unwrap_or_else(|p| p.into_inner());
    let leader_error = |e, sent: Tick| wal_error(shipping, follower, sent, e);
    let from = Tick::new(machine().sent());
    let mut reader = wal.reader_after(from).map_err(|e| leader_error(e, from))?;
    loop {
        if acks.is_finished() {
            return Ok(());
        }
        if node
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(NetError::Closed {
                error_num: errors::SHUTTING_DOWN,
                message: "leader is shutting down".into(),
            });
        }
        // Collect what is durable now, up to a chunk.
        let mut blocks: Vec<Bytes> = Vec::new();
        // A block that fails its checks ends the session, but only after the good blocks read
        // before it: the follower gets everything up to it, then the error naming it.
        let mut failed = None;
        loop {
            let block = match reader.next_block() {
                Ok(Some(block)) => block,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(leader_error(e, Tick::new(machine().sent())));
                    break;
                }
            };
            let ticks = block.ticks();
            let span = BlockSpan {
                first: ticks.first.get(),
                last: ticks.last.get(),
                bytes: block.bytes().len(),
            };
            let offer = machine().offer(span);
            if offer == Offer::Skip {
                continue;
            }
            blocks.push(block.into_bytes());
            if offer == Offer::AddAndSend {
                break;
            }
        }
        let shipped = !blocks.is_empty();
        if shipped {
            sender.send_blocks(wal.last_tick().get(), blocks).await?;
            machine().frame_sent();
        }
        let sent = Tick::new(machine().sent());
        if let Some(e) = failed {
            tracing::error!(follower, "replication: cannot ship after tick {sent}: {e}");
            return Err(e);
        }
        if shipped {
            continue;
        }
        // Nothing new: wait for the next durable block, saying so every second.
        match tokio::time::timeout(IDLE_EVERY, wal.changed_after(sent)).await {
            Ok(tick) if tick <= sent => {
                return Err(NetError::Closed {
                    error_num: errors::SHUTTING_DOWN,
                    message: "the leader's log is closed".into(),
                })
            }
            Ok(_) => {}
            Err(_) => {
                if machine().quiet_for(IDLE_EVERY) {
                    sender
                        .send(&Idle {
                            last_tick: wal.last_tick().get(),
                        })
                        .await?
                }
            }
        }
    }
}
