//! The handshake of a replication session, both sides: Hello → Challenge → Proof → Welcome
//! (PROTOCOL.md "Handshake"). After it the follower sends `Tail` and the leader streams.
//!
//! Each side is a state machine that does no I/O ([`LeaderHandshake`], [`FollowerHandshake`]):
//! frames go in, the messages to send come out, so every transition is tested without sockets.
//! [`accept`] and [`connect`] drive them over a QUIC stream.

use std::time::Duration;

use quinn::Connection;

use crate::errors;
use crate::frame::Frame;
use crate::message::{Challenge, Close, Control, Hello, Proof, Welcome, PROTOCOL_VERSION};
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

/// What the leader does after a frame of the handshake.
#[derive(Debug)]
pub enum LeaderStep {
    /// Send the challenge, then wait for the follower's proof.
    Challenge(Challenge),
    /// Send `Welcome`: the follower is in. Carries its Hello and the authenticated user name.
    Welcome {
        welcome: Welcome,
        hello: Box<Hello>,
        username: String,
    },
    /// Send `Close` with this error and end the session.
    Refuse { error_num: u32, message: String },
}

enum LeaderState {
    AwaitHello,
    AwaitProof {
        hello: Box<Hello>,
        scram: ScramServer,
    },
    Done,
}

/// The leader's half of the handshake, without I/O.
pub struct LeaderHandshake<'a> {
    leader: &'a LeaderSide<'a>,
    /// The TLS session's channel binding (`tls-exporter`), which the follower's proof must carry.
    binding: Vec<u8>,
    state: LeaderState,
}

impl<'a> LeaderHandshake<'a> {
    pub fn new(leader: &'a LeaderSide<'a>, binding: Vec<u8>) -> LeaderHandshake<'a> {
        LeaderHandshake {
            leader,
            binding,
            state: LeaderState::AwaitHello,
        }
    }

    /// Takes the next frame from the follower. A frame that is not the expected message is an
    /// error (the session ends without an answer).
    pub fn on_frame(&mut self, frame: &Frame) -> Result<LeaderStep> {
        match std::mem::replace(&mut self.state, LeaderState::Done) {
            LeaderState::AwaitHello => {
                let hello = Box::new(Hello::from_frame(frame)?);
                if hello.version != PROTOCOL_VERSION {
                    return Ok(LeaderStep::Refuse {
                        error_num: errors::LEADER_INCOMPATIBLE,
                        message: format!(
                            "protocol version {} is not spoken here (this leader speaks \
                             {PROTOCOL_VERSION})",
                            hello.version
                        ),
                    });
                }
                let credentials = self.leader.credentials;
                let scram = match ScramServer::start(&hello.client_first, |name| {
                    credentials.and_then(|lookup| lookup(name))
                }) {
                    Ok(scram) => scram,
                    Err(e) => {
                        return Ok(LeaderStep::Refuse {
                            error_num: errors::UNAUTHORIZED,
                            message: auth_text(e),
                        })
                    }
                };
                let challenge = Challenge {
                    version: PROTOCOL_VERSION,
                    server_id: self.leader.server_id.to_string(),
                    server_first: scram.server_first().to_string(),
                };
                self.state = LeaderState::AwaitProof { hello, scram };
                Ok(LeaderStep::Challenge(challenge))
            }
            LeaderState::AwaitProof { hello, scram } => {
                let proof = Proof::from_frame(frame)?;
                let server_final = match self.leader.credentials {
                    Some(_) => match scram.finish(&proof.client_final, &self.binding) {
                        Ok(server_final) => server_final,
                        Err(e) => {
                            return Ok(LeaderStep::Refuse {
                                error_num: errors::UNAUTHORIZED,
                                message: auth_text(e),
                            })
                        }
                    },
                    None => String::new(),
                };
                if !(self.leader.database_exists)(&hello.database) {
                    return Ok(LeaderStep::Refuse {
                        error_num: errors::DATABASE_NOT_FOUND,
                        message: format!("database '{}' not found", hello.database),
                    });
                }
                let (first_tick, last_tick) = (self.leader.log_range)();
                Ok(LeaderStep::Welcome {
                    welcome: Welcome {
                        server_final,
                        first_tick,
                        last_tick,
                    },
                    hello,
                    username: scram.username().to_string(),
                })
            }
            LeaderState::Done => Err(Error::Protocol(
                "a message after the handshake ended".into(),
            )),
        }
    }
}

/// Leader side: reads the follower's Hello, authenticates it, answers Welcome. Returns the Hello
/// and the authenticated user name.
pub async fn accept(
    connection: &Connection,
    stream: &mut FramedStream,
    leader: &LeaderSide<'_>,
) -> Result<(Hello, String)> {
    let mut handshake = LeaderHandshake::new(leader, channel_binding(connection)?.to_vec());
    loop {
        let frame = stream.recv(HANDSHAKE_TIMEOUT).await?;
        match handshake.on_frame(&frame)? {
            LeaderStep::Challenge(challenge) => stream.send(&challenge).await?,
            LeaderStep::Welcome {
                welcome,
                hello,
                username,
            } => {
                stream.send(&welcome).await?;
                return Ok((*hello, username));
            }
            LeaderStep::Refuse { error_num, message } => {
                return Err(refuse(connection, stream, error_num, message).await)
            }
        }
    }
}

/// What the follower says about itself.
pub struct FollowerSide<'a> {
    pub server_id: &'a str,
    pub database: &'a str,
    pub client_info: &'a str,
    pub username: &'a str,
    pub password: &'a str,
}

/// What the follower does after a frame of the handshake.
#[derive(Debug)]
pub enum FollowerStep {
    /// Send the proof, then wait for `Welcome`.
    Proof(Proof),
    /// The leader proved itself and let us in: its server id and its `Welcome`.
    Done { leader_id: String, welcome: Welcome },
}

enum FollowerState {
    AwaitChallenge,
    AwaitWelcome { leader_id: String },
    Done,
}

/// The follower's half of the handshake, without I/O.
pub struct FollowerHandshake {
    scram: ScramClient,
    binding: Vec<u8>,
    /// Whether we have a password to protect (then the leader must prove it knows it too).
    password_set: bool,
    state: FollowerState,
}

impl FollowerHandshake {
    /// Starts the handshake; the returned Hello is the first message to send.
    pub fn start(follower: &FollowerSide<'_>, binding: Vec<u8>) -> (FollowerHandshake, Hello) {
        let scram = ScramClient::new(follower.username, follower.password);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            server_id: follower.server_id.to_string(),
            database: follower.database.to_string(),
            client_info: follower.client_info.to_string(),
            client_first: scram.client_first(),
        };
        let handshake = FollowerHandshake {
            scram,
            binding,
            password_set: !follower.password.is_empty(),
            state: FollowerState::AwaitChallenge,
        };
        (handshake, hello)
    }

    /// Takes the next frame from the leader. A `Close` from the leader becomes the error it
    /// carries (`Auth` for a refused login).
    pub fn on_frame(&mut self, frame: &Frame) -> Result<FollowerStep> {
        match std::mem::replace(&mut self.state, FollowerState::Done) {
            FollowerState::AwaitChallenge => {
                let challenge = Challenge::from_frame(frame)?;
                if challenge.version != PROTOCOL_VERSION {
                    return Err(Error::Closed {
                        error_num: errors::LEADER_INCOMPATIBLE,
                        message: format!(
                            "the leader speaks protocol version {}",
                            challenge.version
                        ),
                    });
                }
                let client_final = self
                    .scram
                    .client_final(&challenge.server_first, &self.binding)?;
                self.state = FollowerState::AwaitWelcome {
                    leader_id: challenge.server_id,
                };
                Ok(FollowerStep::Proof(Proof { client_final }))
            }
            FollowerState::AwaitWelcome { leader_id } => {
                let welcome = Welcome::from_frame(frame)?;
                if welcome.server_final.is_empty() {
                    // A leader with authentication off does not prove itself; accept that only
                    // when we have no password to protect either.
                    if self.password_set {
                        return Err(Error::Auth(
                            "the leader did not prove that it knows the password".into(),
                        ));
                    }
                } else {
                    self.scram.verify_server_final(&welcome.server_final)?;
                }
                Ok(FollowerStep::Done { leader_id, welcome })
            }
            FollowerState::Done => Err(Error::Protocol(
                "a handshake message after the handshake ended".into(),
            )),
        }
    }
}

/// Follower side: Hello, proof, and the leader's proof. Returns the leader's server id and its
/// Welcome.
pub async fn connect(
    connection: &Connection,
    stream: &mut FramedStream,
    follower: &FollowerSide<'_>,
) -> Result<(String, Welcome)> {
    let (mut handshake, hello) =
        FollowerHandshake::start(follower, channel_binding(connection)?.to_vec());
    stream.send(&hello).await?;
    loop {
        let frame = stream.recv(HANDSHAKE_TIMEOUT).await?;
        match handshake.on_frame(&frame)? {
            FollowerStep::Proof(proof) => stream.send(&proof).await?,
            FollowerStep::Done { leader_id, welcome } => return Ok((leader_id, welcome)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;
    use crate::frame::Decoder;
    use crate::scram::{salted_password, StoredCredential};

    /// A message as the peer's decoder sees it (encoded, then decoded like any received frame).
    fn frame<T: Control>(message: &T) -> Frame {
        let mut decoder = Decoder::new(1 << 20);
        decoder.push(&message.to_frame());
        decoder.next_frame().unwrap().unwrap()
    }

    fn credential(password: &str) -> StoredCredential {
        let salt = b"0123456789abcdef".to_vec();
        StoredCredential {
            salted_password: salted_password(password, &salt, 4096),
            salt,
            iterations: 4096,
        }
    }

    fn lookup(name: &str) -> Option<StoredCredential> {
        (name == "root").then(|| credential("secret"))
    }

    fn leader_side<'a>(credentials: Option<&'a CredentialLookup<'a>>) -> LeaderSide<'a> {
        LeaderSide {
            server_id: "1111",
            credentials,
            database_exists: &|name| name == "_system",
            log_range: &|| (5, 42),
        }
    }

    fn follower_side<'a>(password: &'a str, database: &'a str) -> FollowerSide<'a> {
        FollowerSide {
            server_id: "2222",
            database,
            client_info: "test",
            username: "root",
            password,
        }
    }

    /// Runs both machines against each other; returns the leader's last step and the
    /// follower's result (`None` if the leader refused before the follower got an answer).
    fn run(
        leader: &LeaderSide<'_>,
        follower: &FollowerSide<'_>,
        leader_binding: &[u8],
        follower_binding: &[u8],
    ) -> (LeaderStep, Option<Result<FollowerStep>>) {
        let mut leader_machine = LeaderHandshake::new(leader, leader_binding.to_vec());
        let (mut follower_machine, hello) =
            FollowerHandshake::start(follower, follower_binding.to_vec());
        let challenge = match leader_machine.on_frame(&frame(&hello)).unwrap() {
            LeaderStep::Challenge(challenge) => challenge,
            other => return (other, None),
        };
        assert_eq!(challenge.server_id, "1111");
        let proof = match follower_machine.on_frame(&frame(&challenge)) {
            Ok(FollowerStep::Proof(proof)) => proof,
            other => panic!("expected a proof, got {other:?}"),
        };
        let step = leader_machine.on_frame(&frame(&proof)).unwrap();
        let answer = match &step {
            LeaderStep::Welcome { welcome, .. } => follower_machine.on_frame(&frame(welcome)),
            LeaderStep::Refuse { error_num, message } => {
                follower_machine.on_frame(&frame(&Close {
                    error_num: *error_num,
                    error_message: message.clone(),
                }))
            }
            LeaderStep::Challenge(_) => panic!("a second challenge"),
        };
        (step, Some(answer))
    }

    #[test]
    fn right_password_lets_the_follower_in_and_the_leader_proves_itself() {
        let (step, answer) = run(
            &leader_side(Some(&lookup)),
            &follower_side("secret", "_system"),
            &[7; 32],
            &[7; 32],
        );
        let LeaderStep::Welcome {
            welcome,
            hello,
            username,
        } = step
        else {
            panic!("refused: {step:?}");
        };
        assert_eq!(
            (username.as_str(), hello.server_id.as_str()),
            ("root", "2222")
        );
        assert_eq!((welcome.first_tick, welcome.last_tick), (5, 42));
        assert!(!welcome.server_final.is_empty());
        match answer.unwrap().unwrap() {
            FollowerStep::Done { leader_id, welcome } => {
                assert_eq!(leader_id, "1111");
                assert_eq!(welcome.last_tick, 42);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_password_is_refused_with_11_on_both_sides() {
        let (step, answer) = run(
            &leader_side(Some(&lookup)),
            &follower_side("guess", "_system"),
            &[7; 32],
            &[7; 32],
        );
        assert!(
            matches!(
                step,
                LeaderStep::Refuse {
                    error_num: errors::UNAUTHORIZED,
                    ..
                }
            ),
            "{step:?}"
        );
        assert!(matches!(answer.unwrap(), Err(Error::Auth(_))));
    }

    #[test]
    fn unknown_user_is_refused_like_a_wrong_password() {
        // An unknown name still gets a challenge (the answer does not tell which names exist)
        // and is refused at the proof.
        let follower = FollowerSide {
            username: "mallory",
            ..follower_side("secret", "_system")
        };
        let (step, answer) = run(&leader_side(Some(&lookup)), &follower, &[7; 32], &[7; 32]);
        assert!(
            matches!(
                step,
                LeaderStep::Refuse {
                    error_num: errors::UNAUTHORIZED,
                    ..
                }
            ),
            "{step:?}"
        );
        assert!(matches!(answer, Some(Err(Error::Auth(_)))));
    }

    #[test]
    fn a_man_in_the_middle_with_another_tls_session_is_refused() {
        // The follower's TLS session ends at the attacker, whose own session to the leader has
        // another exporter value: the relayed proof does not match it.
        let (step, answer) = run(
            &leader_side(Some(&lookup)),
            &follower_side("secret", "_system"),
            &[8; 32],
            &[7; 32],
        );
        match step {
            LeaderStep::Refuse { error_num, message } => {
                assert_eq!(error_num, errors::UNAUTHORIZED);
                assert!(message.contains("channel binding"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(answer.unwrap(), Err(Error::Auth(_))));
    }

    #[test]
    fn an_impostor_leader_cannot_prove_the_password() {
        // The impostor does not know the salted password: it answers with a made-up one.
        let impostor = |name: &str| (name == "root").then(|| credential("not the secret"));
        let impostor_side = leader_side(Some(&impostor));
        let mut impostor_machine = LeaderHandshake::new(&impostor_side, vec![7; 32]);
        let (mut follower, hello) =
            FollowerHandshake::start(&follower_side("secret", "_system"), vec![7; 32]);
        let LeaderStep::Challenge(challenge) = impostor_machine.on_frame(&frame(&hello)).unwrap()
        else {
            panic!("no challenge");
        };
        let FollowerStep::Proof(_proof) = follower.on_frame(&frame(&challenge)).unwrap() else {
            panic!("no proof");
        };
        // Whatever the impostor sends as its proof, the follower refuses it.
        let forged = Welcome {
            server_final: "v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            first_tick: 0,
            last_tick: 1,
        };
        assert!(follower.on_frame(&frame(&forged)).is_err());
    }

    #[test]
    fn a_leader_without_authentication_is_accepted_only_without_a_password() {
        let (step, answer) = run(
            &leader_side(None),
            &follower_side("", "_system"),
            &[7; 32],
            &[7; 32],
        );
        assert!(matches!(step, LeaderStep::Welcome { .. }), "{step:?}");
        assert!(matches!(answer.unwrap(), Ok(FollowerStep::Done { .. })));

        let (step, answer) = run(
            &leader_side(None),
            &follower_side("secret", "_system"),
            &[7; 32],
            &[7; 32],
        );
        assert!(matches!(step, LeaderStep::Welcome { .. }), "{step:?}");
        match answer.unwrap() {
            Err(Error::Auth(text)) => assert!(text.contains("did not prove"), "{text}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_database_and_other_versions_are_refused_with_their_numbers() {
        let (step, _) = run(
            &leader_side(Some(&lookup)),
            &follower_side("secret", "nope"),
            &[7; 32],
            &[7; 32],
        );
        assert!(
            matches!(
                step,
                LeaderStep::Refuse {
                    error_num: errors::DATABASE_NOT_FOUND,
                    ..
                }
            ),
            "{step:?}"
        );

        let side = leader_side(Some(&lookup));
        let mut leader = LeaderHandshake::new(&side, vec![7; 32]);
        let (_, mut hello) = FollowerHandshake::start(&follower_side("secret", "_system"), vec![]);
        hello.version = PROTOCOL_VERSION + 1;
        assert!(matches!(
            leader.on_frame(&frame(&hello)).unwrap(),
            LeaderStep::Refuse {
                error_num: errors::LEADER_INCOMPATIBLE,
                ..
            }
        ));

        let (mut follower, _) =
            FollowerHandshake::start(&follower_side("secret", "_system"), vec![]);
        let challenge = Challenge {
            version: PROTOCOL_VERSION + 1,
            server_id: "1111".into(),
            server_first: String::new(),
        };
        assert!(matches!(
            follower.on_frame(&frame(&challenge)),
            Err(Error::Closed {
                error_num: errors::LEADER_INCOMPATIBLE,
                ..
            })
        ));
    }

    #[test]
    fn messages_out_of_order_end_the_handshake() {
        let side = leader_side(Some(&lookup));
        let mut leader = LeaderHandshake::new(&side, vec![7; 32]);
        let proof = Proof {
            client_final: "c=biws,r=x,p=y".into(),
        };
        assert!(matches!(
            leader.on_frame(&frame(&proof)),
            Err(Error::Protocol(_))
        ));
        // Done is final.
        assert!(leader.on_frame(&frame(&proof)).is_err());

        let (mut follower, hello) =
            FollowerHandshake::start(&follower_side("secret", "_system"), vec![]);
        assert!(matches!(
            follower.on_frame(&frame(&hello)),
            Err(Error::Protocol(_))
        ));
    }
}
