//! tickship's wire side: the replication protocol (framing, messages, SCRAM authentication bound
//! to the TLS session) and its QUIC transport (quinn + rustls with ring). No disk: certificates
//! and keys come in as DER, the caller stores them. `PROTOCOL.md` documents the wire.

pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod message;
pub mod scram;
pub mod session;
pub mod stream;
pub mod transport;

pub use frame::{Frame, Kind};
pub use message::{
    Ack, Challenge, Close, Control, Hello, Idle, Proof, Tail, Welcome, PROTOCOL_VERSION,
};
pub use quinn;
pub use transport::{FramedStream, Identity, ALPN};

/// ArangoDB error numbers the protocol carries.
pub mod errors {
    /// No (or an incomplete) response from the leader.
    pub const NO_RESPONSE: u32 = 1400;
    /// A malformed message.
    pub const INVALID_RESPONSE: u32 = 1401;
    /// The leader failed.
    pub const LEADER_ERROR: u32 = 1402;
    /// Protocol versions differ.
    pub const LEADER_INCOMPATIBLE: u32 = 1403;
    /// A different leader than the one recorded.
    pub const LEADER_CHANGE: u32 = 1404;
    /// Replicating from itself.
    pub const LOOP: u32 = 1405;
    /// The leader no longer has the start tick.
    pub const START_TICK_NOT_PRESENT: u32 = 1414;
    /// Wrong credentials.
    pub const UNAUTHORIZED: u32 = 11;
    /// Unknown database.
    pub const DATABASE_NOT_FOUND: u32 = 1228;
    /// The leader is shutting down.
    pub const SHUTTING_DOWN: u32 = 30;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer broke the protocol: bad frame, unexpected message.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Authentication failed (either side).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The peer closed the session with an error number.
    #[error("closed by peer: {message} (error {error_num})")]
    Closed { error_num: u32, message: String },
    /// The connection failed (connect, TLS, timeouts, reset).
    #[error("transport: {0}")]
    Transport(String),
}

impl Error {
    /// The ArangoDB error number this error is reported with.
    pub fn error_num(&self) -> u32 {
        match self {
            Error::Protocol(_) => errors::INVALID_RESPONSE,
            Error::Auth(_) => errors::UNAUTHORIZED,
            Error::Closed { error_num, .. } => *error_num,
            Error::Transport(_) => errors::NO_RESPONSE,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
