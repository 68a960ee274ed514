//! Control messages: small JSON objects in frames of their kind. Unknown fields are refused, so
//! a peer speaking another dialect fails at the first frame with a clear error.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::frame::{self, Frame, Kind};
use crate::{Error, Result};

/// Protocol version spoken here. A leader refuses other versions with error 1403, so that
/// servers of different versions tell each other at the handshake rather than in the middle
/// of the log. 2: blocks may hold `DocumentInsert` records (WAL type 2301).
pub const PROTOCOL_VERSION: u32 = 2;

/// Follower → leader, first frame: who it is and the SCRAM client-first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Hello {
    pub version: u32,
    /// The follower's server id (decimal string, as ArangoDB prints server ids).
    pub server_id: String,
    pub database: String,
    /// Free text shown as `clientInfo` in the leader's `logger-state`.
    pub client_info: String,
    /// SCRAM-SHA-256-PLUS client-first message (RFC 5802, gs2 header included).
    pub client_first: String,
}

/// Leader → follower: the leader's server id and the SCRAM server-first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Challenge {
    pub version: u32,
    pub server_id: String,
    pub server_first: String,
}

/// Follower → leader: the SCRAM client-final message (channel binding and proof).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Proof {
    pub client_final: String,
}

/// Leader → follower: the SCRAM server-final message and the leader's log range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Welcome {
    pub server_final: String,
    pub first_tick: u64,
    pub last_tick: u64,
}

/// Follower → leader: send every block after tick `from` (exclusive), `Blocks` frames of at most
/// `chunk_bytes` (0: the leader's default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tail {
    pub from: u64,
    pub chunk_bytes: u64,
}

/// Leader → follower: nothing new after the last frame; the leader's last tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Idle {
    pub last_tick: u64,
}

/// Follower → leader: every block up to `durable` is in the follower's WAL, every change up to
/// `applied` is visible in its store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ack {
    pub durable: u64,
    pub applied: u64,
}

/// Either side: the session ends, with an ArangoDB error number (0 for a normal close).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Close {
    pub error_num: u32,
    pub error_message: String,
}

/// A control message and its frame kind.
pub trait Control: Serialize + DeserializeOwned {
    const KIND: Kind;

    fn to_frame(&self) -> bytes::Bytes {
        let json = serde_json::to_vec(self)
            .expect("control messages hold only strings and integers, which always serialise");
        frame::encode(Self::KIND, &json)
    }

    /// Decodes `frame`, which must be of this message's kind.
    fn from_frame(frame: &Frame) -> Result<Self> {
        if frame.kind == Kind::Close && Self::KIND != Kind::Close {
            let close = Close::from_frame(frame)?;
            if close.error_num == crate::errors::UNAUTHORIZED {
                return Err(Error::Auth(close.error_message));
            }
            return Err(Error::Closed {
                error_num: close.error_num,
                message: close.error_message,
            });
        }
        if frame.kind != Self::KIND {
            return Err(Error::Protocol(format!(
                "expected a {:?} frame, got {:?}",
                Self::KIND,
                frame.kind
            )));
        }
        serde_json::from_slice(&frame.payload)
            .map_err(|e| Error::Protocol(format!("invalid {:?} frame: {e}", Self::KIND)))
    }
}

impl Control for Hello {
    const KIND: Kind = Kind::Hello;
}
impl Control for Challenge {
    const KIND: Kind = Kind::Challenge;
}
impl Control for Proof {
    const KIND: Kind = Kind::Proof;
}
impl Control for Welcome {
    const KIND: Kind = Kind::Welcome;
}
impl Control for Tail {
    const KIND: Kind = Kind::Tail;
}
impl Control for Idle {
    const KIND: Kind = Kind::Idle;
}
impl Control for Ack {
    const KIND: Kind = Kind::Ack;
}
impl Control for Close {
    const KIND: Kind = Kind::Close;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;
    use crate::frame::Decoder;

    fn decode(bytes: bytes::Bytes) -> Frame {
        let mut decoder = Decoder::new(frame::BLOCKS_BYTES_MAX);
        decoder.push(&bytes);
        decoder.next_frame().unwrap().unwrap()
    }

    #[test]
    fn messages_round_trip() {
        let tail = Tail {
            from: 42,
            chunk_bytes: 1 << 20,
        };
        assert_eq!(Tail::from_frame(&decode(tail.to_frame())).unwrap(), tail);
        let ack = Ack {
            durable: 9,
            applied: 7,
        };
        assert_eq!(Ack::from_frame(&decode(ack.to_frame())).unwrap(), ack);
    }

    #[test]
    fn wrong_kind_unknown_fields_and_close_are_errors() {
        let tail = Tail {
            from: 1,
            chunk_bytes: 0,
        };
        assert!(matches!(
            Ack::from_frame(&decode(tail.to_frame())),
            Err(Error::Protocol(_))
        ));
        let extra = frame::encode(Kind::Ack, br#"{"durable":1,"applied":1,"x":2}"#);
        assert!(Ack::from_frame(&decode(extra)).is_err());
        let close = Close {
            error_num: 1414,
            error_message: "gone".into(),
        };
        match Ack::from_frame(&decode(close.to_frame())) {
            Err(Error::Closed { error_num, message }) => {
                assert_eq!(error_num, 1414);
                assert_eq!(message, "gone");
            }
            other => panic!("{other:?}"),
        }
    }
}
