//! The handshake of a replication session, both sides: Hello → Challenge → Proof → Welcome
//! (PROTOCOL.md "Handshake"). After it the follower sends `Tail` and the leader streams.

use std::time::Duration;

use quinn::Connection;

use crate::errors;
use crate::message::{Challenge, Close, Hello, Proof, Welcome, PROTOCOL_VERSION};
use crate::scram::{ScramClient, ScramServer, StoredCredential};
use crate::transport::{channel_binding, FramedStream};
use crate::{Error, Result};

/// How long each handshake step may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Gives the stored SCRAM credential of a user name.
pub type CredentialLookup<'a> = dyn Fn(&str) -> Option<StoredCredential> + Sync + 'a;

/// What the leader checks a follower against.
pub struct LeaderSide<'a> {
    pub server_id: &'a str,
    /// `None` when authentication is off: any user is accepted and the leader does not prove
    /// itself (`serverFinal` is empty).
    pub credentials: Option<&'a CredentialLookup<'a>>,
    /// Whether the database exists.
    pub database_exists: &'a (dyn Fn(&str) -> bool + Sync),
    /// The leader's (first, last) tick, sent in `Welcome`.
    pub log_range: &'a (dyn Fn() -> (u64, u64) + Sync),
}

/// Sends `Close {error_num, message}`, lets it reach the peer (which closes on reading it), and
/// returns the matching error.
pub async fn refuse(
    connection: &Connection,
    stream: &mut FramedStream,
    error_num: u32,
    message: String,
) -> Error {
    let _ = stream
        .send(&Close {
            error_num,
            error_message: message.clone(),
        })
        .await;
    // Let the Close reach the follower before the connection goes: it closes on reading it.
    stream.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
    match error_num {
        errors::UNAUTHORIZED => Error::Auth(message),
        _ => Error::Closed { error_num, message },
    }
}

fn auth_text(error: Error) -> String {
    match error {
        Error::Auth(text) => text,
        other => other.to_string(),
    }
}

/// Leader side: reads the follower's Hello, authenticates it, answers Welcome. Returns the Hello
/// and the authenticated user name.
pub async fn accept(
    connection: &Connection,
    stream: &mut FramedStream,
    leader: &LeaderSide<'_>,
) -> Result<(Hello, String)> {
    let hello: Hello = stream.recv_message(HANDSHAKE_TIMEOUT).await?;
    if hello.version != PROTOCOL_VERSION {
        let message = format!(
            "protocol version {} is not spoken here (this leader speaks {PROTOCOL_VERSION})",
            hello.version
        );
        return Err(refuse(connection, stream, errors::LEADER_INCOMPATIBLE, message).await);
    }
    let scram = match ScramServer::start(&hello.client_first, |name| {
        leader.credentials.and_then(|lookup| lookup(name))
    }) {
        Ok(scram) => scram,
        Err(e) => return Err(refuse(connection, stream, errors::UNAUTHORIZED, auth_text(e)).await),
    };
    stream
        .send(&Challenge {
            version: PROTOCOL_VERSION,
            server_id: leader.server_id.to_string(),
            server_first: scram.server_first().to_string(),
        })
        .await?;
    let proof: Proof = stream.recv_message(HANDSHAKE_TIMEOUT).await?;
    let server_final = match leader.credentials {
        Some(_) => {
            let binding = channel_binding(connection)?;
            match scram.finish(&proof.client_final, &binding) {
                Ok(server_final) => server_final,
                Err(e) => {
                    return Err(
                        refuse(connection, stream, errors::UNAUTHORIZED, auth_text(e)).await,
                    )
                }
            }
        }
        None => String::new(),
    };
    if !(leader.database_exists)(&hello.database) {
        let message = format!("database '{}' not found", hello.database);
        return Err(refuse(connection, stream, errors::DATABASE_NOT_FOUND, message).await);
    }
    let (first_tick, last_tick) = (leader.log_range)();
    stream
        .send(&Welcome {
            server_final,
            first_tick,
            last_tick,
        })
        .await?;
    Ok((hello, scram.username().to_string()))
}

/// What the follower says about itself.
pub struct FollowerSide<'a> {
    pub server_id: &'a str,
    pub database: &'a str,
    pub client_info: &'a str,
    pub username: &'a str,
    pub password: &'a str,
}

/// Follower side: Hello, proof, and the leader's proof. Returns the leader's server id and its
/// Welcome.
pub async fn connect(
    connection: &Connection,
    stream: &mut FramedStream,
    follower: &FollowerSide<'_>,
) -> Result<(String, Welcome)> {
    let mut scram = ScramClient::new(follower.username, follower.password);
    stream
        .send(&Hello {
            version: PROTOCOL_VERSION,
            server_id: follower.server_id.to_string(),
            database: follower.database.to_string(),
            client_info: follower.client_info.to_string(),
            client_first: scram.client_first(),
        })
        .await?;
    let challenge: Challenge = stream.recv_message(HANDSHAKE_TIMEOUT).await?;
    if challenge.version != PROTOCOL_VERSION {
        return Err(Error::Closed {
            error_num: errors::LEADER_INCOMPATIBLE,
            message: format!("the leader speaks protocol version {}", challenge.version),
        });
    }
    let binding = channel_binding(connection)?;
    let client_final = scram.client_final(&challenge.server_first, &binding)?;
    stream.send(&Proof { client_final }).await?;
    let welcome: Welcome = stream.recv_message(HANDSHAKE_TIMEOUT).await?;
    if welcome.server_final.is_empty() {
        // A leader with authentication off does not prove itself; accept that only when we
        // have no password to protect either.
        if !follower.password.is_empty() {
            return Err(Error::Auth(
                "the leader did not prove that it knows the password".into(),
            ));
        }
    } else {
        scram.verify_server_final(&welcome.server_final)?;
    }
    Ok((challenge.server_id, welcome))
}
