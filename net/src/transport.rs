//! QUIC transport: endpoints (quinn, rustls with ring, TLS 1.3 only), the leader's identity, the
//! follower's certificate check (a pinned SHA-256 fingerprint, or any certificate when none is
//! pinned: the SCRAM proof is bound to the TLS session either way), and a framed stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::frame::{self, Decoder, Frame, Kind, Piece};
use crate::message::Control;
use crate::scram::{CHANNEL_BINDING_BYTES, EXPORTER_LABEL};
use crate::{Error, Result};

/// ALPN protocol id. It names the framing, not the protocol version: peers of different versions
/// still connect, and the handshake refuses them with 1403 (PROTOCOL.md "Handshake").
pub const ALPN: &[u8] = b"tickship-repl/1";
/// The name the follower asks for; certificates are checked by fingerprint, not by name.
pub const SERVER_NAME: &str = "tickship";

fn transport_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Transport(format!("{context}: {e}"))
}

/// The leader's TLS identity.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl Identity {
    /// A new self-signed certificate (ECDSA P-256) for `names`.
    pub fn generate(names: Vec<String>) -> Result<Identity> {
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| transport_error("generate a certificate", e))?;
        Ok(Identity {
            cert_chain: vec![certified.cert.der().clone()],
            key_der: certified.key_pair.serialize_der(),
        })
    }

    /// PEM text of the certificate chain and of the private key (PKCS#8).
    pub fn to_pem(&self) -> (String, String) {
        let cert = self
            .cert_chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c))
            .collect::<String>();
        (cert, pem_block("PRIVATE KEY", &self.key_der))
    }

    /// Reads PEM text: certificates and a PKCS#8 private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Identity> {
        let cert_chain: Vec<CertificateDer<'static>> = pem_blocks(cert_pem, "CERTIFICATE")?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        if cert_chain.is_empty() {
            return Err(Error::Transport(
                "no CERTIFICATE in the certificate file".into(),
            ));
        }
        let key_der = pem_blocks(key_pem, "PRIVATE KEY")?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Transport("no PRIVATE KEY (PKCS#8) in the key file".into()))?;
        Ok(Identity {
            cert_chain,
            key_der,
        })
    }

    /// SHA-256 of the leaf certificate, lowercase hex: what `--replication.leader-fingerprint`
    /// pins.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_chain[0])
    }
}

pub fn fingerprint(cert: &[u8]) -> String {
    Sha256::digest(cert)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_blocks(text: &str, label: &str) -> Result<Vec<Vec<u8>>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let stop = after
            .find(&end)
            .ok_or_else(|| Error::Transport(format!("unterminated {label} block")))?;
        let body: String = after[..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| Error::Transport(format!("{label} block is not base64: {e}")))?;
        out.push(der);
        rest = &after[stop + end.len()..];
    }
    Ok(out)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The stream window of a leader, which receives only a follower's small control messages.
const SERVER_STREAM_WINDOW: u32 = 16 << 20;

/// Least stream window a follower may ask for.
pub const STREAM_WINDOW_MIN: u32 = 64 << 10;

fn transport_config(stream_window: u32) -> Arc<TransportConfig> {
    let mut config = TransportConfig::default();
    // One stream carries the whole log. Its window is what a receiver buffers when it reads
    // slower than the peer sends (a follower far behind, whose WAL takes less than the network
    // brings): a follower catching up holds all of it, however far behind it is. It must cover
    // the link's bandwidth-delay product, as a stream carries at most one window per round trip.
    let stream_window = stream_window.max(STREAM_WINDOW_MIN);
    config.stream_receive_window(VarInt::from_u32(stream_window));
    config.receive_window(
        VarInt::from_u64(2 * u64::from(stream_window)).expect("2 × u32 fits a VarInt"),
    );
    config.send_window(32 << 20);
    config.max_concurrent_bidi_streams(VarInt::from_u32(4));
    config.max_concurrent_uni_streams(VarInt::from_u32(0));
    config.keep_alive_interval(Some(Duration::from_secs(2)));
    config.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10))
            .expect("an idle timeout of seconds fits QUIC's 2^62 ms"),
    ));
    config.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
    config.enable_segmentation_offload(true);
    Arc::new(config)
}

/// A UDP socket bound to `addr` for [`server_endpoint`]: bound apart, so that a server learns
/// that its port is taken before it does anything slow.
pub fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    udp_socket(addr).map_err(|e| transport_error(&format!("listen on udp {addr}"), e))
}

/// A QUIC endpoint accepting followers on `socket` (from [`bind_udp`]).
pub fn server_endpoint(socket: std::net::UdpSocket, identity: &Identity) -> Result<Endpoint> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| transport_error("TLS versions", e))?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), key)
        .map_err(|e| transport_error("leader certificate", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| transport_error("QUIC TLS", e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(SERVER_STREAM_WINDOW));
    Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| transport_error("start the QUIC endpoint", e))
}

/// A QUIC endpoint on a UDP socket bound to `addr` with large kernel buffers.
fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<Endpoint> {
    Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        udp_socket(addr)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Bytes of the UDP sockets' kernel buffers asked for (the kernel caps them at
/// `net.core.rmem_max`/`wmem_max`). At the kernel's default a follower's socket overflows when a
/// batch's blocks arrive while its cores are busy (`RcvbufErrors` in /proc/net/snmp), and each
/// datagram lost waits for a probe timeout: that made the tail of the replication lag
/// (docs/benchmarks/2026-11-22-replication.md, "Lag").
const UDP_BUFFER_BYTES: usize = 8 << 20;

/// A UDP socket bound to `addr` with large kernel buffers.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    for (what, result) in [
        ("receive", socket.set_recv_buffer_size(UDP_BUFFER_BYTES)),
        ("send", socket.set_send_buffer_size(UDP_BUFFER_BYTES)),
    ] {
        if let Err(e) = result {
            tracing::warn!("cannot enlarge the UDP {what} buffer: {e}");
        }
    }
    // Linux reports twice what it grants (its bookkeeping), capped by the sysctl.
    if let Ok(granted) = socket.recv_buffer_size() {
        if granted < UDP_BUFFER_BYTES {
            tracing::warn!(
                "UDP receive buffer is {granted} bytes, not {UDP_BUFFER_BYTES}: raise \
                 net.core.rmem_max, or bursts of blocks may be dropped and resent"
            );
        }
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Accepts the leader's certificate if its fingerprint is the pinned one (or any, unpinned),
/// and checks the TLS 1.3 handshake signature with it in every case.
#[derive(Debug)]
struct PinnedCertificate {
    pinned: Option<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pinned) if *pinned != fingerprint(end_entity) => {
                Err(rustls::Error::General(format!(
                    "leader certificate fingerprint {} is not the pinned {pinned}",
                    fingerprint(end_entity)
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not spoken".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client endpoint and the configuration to reach the leader at `leader` (optionally pinning
/// its certificate's SHA-256 fingerprint, hex), receiving at most `stream_window` bytes ahead of
/// what it has read (at least `STREAM_WINDOW_MIN`).
pub fn client_endpoint(
    leader: SocketAddr,
    pinned_fingerprint: Option<&str>,
    stream_window: u32,
) -> Result<(Endpoint, quinn::ClientConfig)> {
    let verifier = PinnedCertificate {
        pinned: pinned_fingerprint.map(|f| f.to_ascii_lowercase().replace(':', "")),
        provider: provider(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| transport_error("TLS versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| transport_error("QUIC TLS", e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(stream_window));
    let endpoint =
        endpoint(client_bind(leader), None).map_err(|e| transport_error("bind a UDP socket", e))?;
    Ok((endpoint, config))
}

/// Where a client's UDP socket is bound to reach `leader`: in its address family (an IPv4
/// socket cannot send to an IPv6 leader), and on the loopback address when the leader is on
/// loopback, so that the socket takes no datagrams from other hosts.
fn client_bind(leader: SocketAddr) -> SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match (leader.ip(), leader.ip().is_loopback()) {
        (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// Connects to the leader at `addr` within `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Connection> {
    let connecting = endpoint
        .connect_with(config.clone(), addr, SERVER_NAME)
        .map_err(|e| transport_error(&format!("connect to {addr}"), e))?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(transport_error(&format!("connect to {addr}"), e)),
        Err(_) => Err(Error::Transport(format!(
            "connect to {addr}: no answer within {timeout:?}"
        ))),
    }
}

/// Channel binding data of `connection`'s TLS session (RFC 9266).
pub fn channel_binding(connection: &Connection) -> Result<[u8; CHANNEL_BINDING_BYTES]> {
    let mut out = [0u8; CHANNEL_BINDING_BYTES];
    connection
        .export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| Error::Transport("TLS exporter unavailable".into()))?;
    Ok(out)
}

/// One bidirectional stream carrying frames.
pub struct FramedStream {
    send: SendStream,
    recv: RecvStream,
    decoder: Decoder,
}

impl FramedStream {
    pub fn new(send: SendStream, recv: RecvStream, blocks_max: usize) -> FramedStream {
        FramedStream {
            send,
            recv,
            decoder: Decoder::new(blocks_max),
        }
    }

    /// The QUIC streams and the decoder, with whatever it has received and not yet handed out.
    pub fn into_inner(self) -> (SendStream, RecvStream, Decoder) {
        (self.send, self.recv, self.decoder)
    }

    /// Splits into a sending and a receiving half.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        (
            FrameSender { send: self.send },
            FrameReceiver {
                recv: self.recv,
                decoder: self.decoder,
            },
        )
    }

    pub async fn send<T: Control>(&mut self, message: &T) -> Result<()> {
        write(&mut self.send, message.to_frame()).await
    }

    /// The next control frame. `silence`: how long the peer may send nothing at all.
    pub async fn recv(&mut self, silence: Duration) -> Result<Frame> {
        recv(&mut self.recv, &mut self.decoder, silence).await
    }

    /// From now on `Blocks` frames arrive block by block, through [`FramedStream::recv_piece`].
    pub fn streaming_blocks(&mut self) {
        self.decoder.streaming_blocks();
    }

    /// The next control frame or block. `silence`: how long the peer may send nothing at all; a
    /// frame or block that is still arriving, however slowly, never times out.
    pub async fn recv_piece(&mut self, silence: Duration) -> Result<Piece> {
        recv_piece(&mut self.recv, &mut self.decoder, silence).await
    }

    /// Finishes the sending side: everything sent is delivered, then the stream ends.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    pub async fn recv_message<T: Control>(&mut self, timeout: Duration) -> Result<T> {
        T::from_frame(&self.recv(timeout).await?)
    }
}

async fn write(send: &mut SendStream, bytes: Bytes) -> Result<()> {
    send.write_chunk(bytes)
        .await
        .map_err(|e| transport_error("send", e))
}

/// Bytes taken from QUIC at a time. Its chunks can be as large as the stream window (it merges
/// small ones), and whatever follows a frame's end waits in the decoder's buffer, which keeps
/// its largest size: unbounded reads would hold a window-sized buffer for good. Smaller reads
/// split QUIC's chunks without copying them.
const READ_CHUNK_MAX: usize = 64 << 10;

async fn recv(recv: &mut RecvStream, decoder: &mut Decoder, silence: Duration) -> Result<Frame> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(frame);
        }
        read_more(recv, decoder, silence).await?;
    }
}

async fn recv_piece(
    recv: &mut RecvStream,
    decoder: &mut Decoder,
    silence: Duration,
) -> Result<Piece> {
    loop {
        if let Some(piece) = decoder.next_piece()? {
            return Ok(piece);
        }
        read_more(recv, decoder, silence).await?;
    }
}

/// Reads the next bytes into `decoder`, waiting at most `silence` for them: the timeout is on
/// the peer saying nothing, not on a whole message, which on a slow link may take far longer.
async fn read_more(recv: &mut RecvStream, decoder: &mut Decoder, silence: Duration) -> Result<()> {
    let chunk = tokio::time::timeout(silence, recv.read_chunk(READ_CHUNK_MAX, true))
        .await
        .map_err(|_| {
            Error::Transport(match decoder.partial() {
                Some((have, len)) => format!(
                    "nothing received for {silence:?} ({have} of {len} bytes of a message in \
                     progress)"
                ),
                None => format!("nothing received for {silence:?}"),
            })
        })?
        .map_err(|e| transport_error("receive", e))?;
    match chunk {
        Some(chunk) => {
            decoder.push(&chunk.bytes);
            Ok(())
        }
        None => Err(Error::Transport("the peer closed the stream".into())),
    }
}

/// The sending half of a framed stream.
pub struct FrameSender {
    send: SendStream,
}

impl FrameSender {
    pub async fn send<T: Control>(&mut self, message: &T) -> Result<()> {
        write(&mut self.send, message.to_frame()).await
    }

    /// Sends one `Blocks` frame: the leader's last tick, then each block with its length. The
    /// blocks go to QUIC as they are (shared `Bytes`, no copy here).
    pub async fn send_blocks(&mut self, last_tick: u64, blocks: Vec<Bytes>) -> Result<()> {
        let payload_len = 8 + blocks.iter().map(|b| 4 + b.len()).sum::<usize>();
        let mut head = Vec::with_capacity(frame::HEADER_BYTES + 8);
        head.extend_from_slice(&frame::header(Kind::Blocks, payload_len));
        head.extend_from_slice(&last_tick.to_le_bytes());
        let mut chunks = Vec::with_capacity(1 + 2 * blocks.len());
        chunks.push(Bytes::from(head));
        for block in blocks {
            chunks.push(Bytes::copy_from_slice(&(block.len() as u32).to_le_bytes()));
            chunks.push(block);
        }
        self.send
            .write_all_chunks(&mut chunks)
            .await
            .map_err(|e| transport_error("send", e))
    }

    /// Finishes the stream (after a `Close`).
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// The receiving half of a framed stream.
pub struct FrameReceiver {
    recv: RecvStream,
    decoder: Decoder,
}

impl FrameReceiver {
    /// The next control frame. `silence`: how long the peer may send nothing at all.
    pub async fn recv(&mut self, silence: Duration) -> Result<Frame> {
        recv(&mut self.recv, &mut self.decoder, silence).await
    }
}
