//! SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) with `tls-exporter` channel binding (RFC 9266): the
//! follower proves it knows the password without sending it, and the proof is bound to the QUIC
//! connection's TLS session, so a man in the middle terminating TLS with its own certificate
//! cannot relay it. The leader proves in turn that it holds the same salted password.
//!
//! Pure state machines: no I/O; the channel binding data (32 bytes of TLS exporter output with
//! label `EXPORTER-Channel-Binding`) is handed in by the transport.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The gs2 header: channel binding required, type tls-exporter, no authzid.
pub const GS2_HEADER: &str = "p=tls-exporter,,";
/// TLS exporter label for channel binding (RFC 9266).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";
/// Bytes of channel binding data.
pub const CHANNEL_BINDING_BYTES: usize = 32;
/// Smallest iteration count a follower accepts from a leader (a leader asking for fewer would
/// make the proof cheap to attack offline).
pub const MIN_ITERATIONS: u32 = 4096;
/// Largest iteration count a follower accepts: ten times what a tickship leader uses. The count
/// comes before the leader has proved anything, and PBKDF2 at u32::MAX iterations would hold the
/// follower for hours (seen while writing the fuzz target of the exchange).
pub const MAX_ITERATIONS: u32 = 1_000_000;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Salted passwords a follower computed, newest last (`salted_password_cached`).
static SALTED: std::sync::Mutex<Vec<SaltedEntry>> = std::sync::Mutex::new(Vec::new());
/// Entries `SALTED` keeps: one per leader and user a process talks to, in practice.
const SALTED_KEPT: usize = 8;

struct SaltedEntry {
    /// SHA-256 of the password: the cache needs to tell passwords apart, not to hold them.
    password: [u8; 32],
    salt: Vec<u8>,
    iterations: u32,
    salted: [u8; 32],
}

/// `salted_password`, remembered for the process's next exchanges with the same password, salt
/// and count, as RFC 5802 (section 5.1) allows a client: at a leader's count the PBKDF2 takes
/// about ten milliseconds, which a follower otherwise spends on every connection (a sync and
/// the tailing after it open two).
fn salted_password_cached(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let hashed: [u8; 32] = Sha256::digest(password.as_bytes()).into();
    let found = |entries: &[SaltedEntry]| {
        entries
            .iter()
            .find(|e| e.password == hashed && e.salt == salt && e.iterations == iterations)
            .map(|e| e.salted)
    };
    if let Some(salted) = found(&SALTED.lock().unwrap_or_else(|p| p.into_inner())) {
        return salted;
    }
    let salted = salted_password(password, salt, iterations);
    let mut entries = SALTED.lock().unwrap_or_else(|p| p.into_inner());
    if found(&entries).is_none() {
        if entries.len() >= SALTED_KEPT {
            entries.remove(0);
        }
        entries.push(SaltedEntry {
            password: hashed,
            salt: salt.to_vec(),
            iterations,
            salted,
        });
    }
    salted
}

/// `Hi()` of RFC 5802: PBKDF2-HMAC-SHA-256 with a 32-byte output.
pub fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

fn keys(salted: &[u8; 32]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let client_key = hmac(salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let server_key = hmac(salted, b"Server Key");
    (client_key, stored_key, server_key)
}

fn nonce() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .expect("the operating system gives random bytes (getrandom(2), else /dev/urandom)");
    STANDARD.encode(bytes)
}

fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_name(name: &str) -> Result<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=3D") => out.push('='),
            Some("=2C") => out.push(','),
            _ => return Err(auth("invalid escape in the user name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn auth(message: &str) -> Error {
    Error::Auth(message.to_string())
}

/// Splits `a=x,b=y` into attributes, checking the expected names in order.
fn attributes<'a>(message: &'a str, names: &[char]) -> Result<Vec<&'a str>> {
    let parts: Vec<&str> = message.split(',').collect();
    if parts.len() < names.len() {
        return Err(auth("SCRAM message has too few attributes"));
    }
    let mut values = Vec::with_capacity(names.len());
    for (part, name) in parts.iter().zip(names) {
        let mut chars = part.chars();
        if chars.next() != Some(*name) || chars.next() != Some('=') {
            return Err(auth(&format!("SCRAM attribute {name}= expected")));
        }
        values.push(&part[2..]);
    }
    Ok(values)
}

/// What the leader knows about a user: the PBKDF2 salt, iteration count and salted password.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub salted_password: [u8; 32],
}

/// The follower's side.
pub struct ScramClient {
    username: String,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    pub fn new(username: &str, password: &str) -> ScramClient {
        ScramClient::with_nonce(username, password, nonce())
    }

    /// `new` with a chosen nonce: for the fuzz target, which must be able to echo it.
    pub(crate) fn with_nonce(username: &str, password: &str, client_nonce: String) -> ScramClient {
        let client_first_bare = format!("n={},r={client_nonce}", escape_name(username));
        ScramClient {
            username: username.to_string(),
            password: password.to_string(),
            client_nonce,
            client_first_bare,
            expected_server_signature: None,
        }
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// The client-first message.
    pub fn client_first(&self) -> String {
        format!("{GS2_HEADER}{}", self.client_first_bare)
    }

    /// Answers the server-first message with the client-final message.
    pub fn client_final(&mut self, server_first: &str, channel_binding: &[u8]) -> Result<String> {
        let values = attributes(server_first, &['r', 's', 'i'])?;
        let (nonce, salt, iterations) = (values[0], values[1], values[2]);
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(auth("the leader's nonce does not extend ours"));
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| auth("the leader's salt is not base64"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| auth("the leader's iteration count is not a number"))?;
        if iterations < MIN_ITERATIONS {
            return Err(auth("the leader asks for too few PBKDF2 iterations"));
        }
        if iterations > MAX_ITERATIONS {
            return Err(auth(&format!(
                "the leader asks for {iterations} PBKDF2 iterations, more than the {MAX_ITERATIONS} \
                 a follower computes"
            )));
        }
        let salted = salted_password_cached(&self.password, &salt, iterations);
        let (client_key, stored_key, server_key) = keys(&salted);
        let mut binding = GS2_HEADER.as_bytes().to_vec();
        binding.extend_from_slice(channel_binding);
        let without_proof = format!("c={},r={nonce}", STANDARD.encode(&binding));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.expected_server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Checks the server-final message: the leader knows the salted password too.
    pub fn verify_server_final(&self, server_final: &str) -> Result<()> {
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(auth(&format!("the leader refused: {error}")));
        }
        let expected = self
            .expected_server_signature
            .ok_or_else(|| auth("server-final before client-final"))?;
        let value = attributes(server_final, &['v'])?[0];
        let signature = STANDARD
            .decode(value)
            .map_err(|_| auth("server signature is not base64"))?;
        if !constant_time_eq(&signature, &expected) {
            return Err(auth(
                "the leader's signature is wrong: it does not know the password",
            ));
        }
        Ok(())
    }
}

/// The leader's side of one exchange.
pub struct ScramServer {
    username: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    credential: Option<StoredCredential>,
}

impl ScramServer {
    /// Reads the client-first message; `lookup` gives the stored credential of a user name.
    /// An unknown user still gets a challenge (with a fake salt) so that the answer does not
    /// reveal which names exist; it fails at the proof.
    pub fn start(
        client_first: &str,
        lookup: impl FnOnce(&str) -> Option<StoredCredential>,
    ) -> Result<ScramServer> {
        ScramServer::start_with_nonce(client_first, lookup, &nonce())
    }

    /// `start` with a chosen nonce of its own: for the fuzz target, which must be able to echo it.
    pub(crate) fn start_with_nonce(
        client_first: &str,
        lookup: impl FnOnce(&str) -> Option<StoredCredential>,
        server_nonce: &str,
    ) -> Result<ScramServer> {
        let bare = client_first.strip_prefix(GS2_HEADER).ok_or_else(|| {
            auth("channel binding tls-exporter is required (gs2 header p=tls-exporter,,)")
        })?;
        let values = attributes(bare, &['n', 'r'])?;
        let username = unescape_name(values[0])?;
        let client_nonce = values[1];
        if client_nonce.is_empty() || client_nonce.contains(',') {
            return Err(auth("invalid client nonce"));
        }
        let credential = lookup(&username);
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (Sha256::digest(username.as_bytes())[..16].to_vec(), 100_000),
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(salt));
        Ok(ScramServer {
            username,
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
            credential,
        })
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final message against this connection's channel binding data; returns
    /// the server-final message.
    pub fn finish(&self, client_final: &str, channel_binding: &[u8]) -> Result<String> {
        let values = attributes(client_final, &['c', 'r', 'p'])?;
        let (binding, nonce, proof) = (values[0], values[1], values[2]);
        let mut expected_binding = GS2_HEADER.as_bytes().to_vec();
        expected_binding.extend_from_slice(channel_binding);
        let binding = STANDARD
            .decode(binding)
            .map_err(|_| auth("channel binding is not base64"))?;
        if !constant_time_eq(&binding, &expected_binding) {
            return Err(auth(
                "channel binding mismatch: the proof was made for another TLS session",
            ));
        }
        if nonce != self.nonce {
            return Err(auth("nonce mismatch"));
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| auth("proof is not base64"))?;
        let Some(credential) = &self.credential else {
            return Err(auth("wrong username or password"));
        };
        let (_, stored_key, server_key) = keys(&credential.salted_password);
        // The proof signs everything before it: the message without its `,p=` attribute.
        let without_proof = client_final
            .rfind(",p=")
            .map(|at| &client_final[..at])
            .ok_or_else(|| auth("SCRAM attribute p= expected"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac(&stored_key, auth_message.as_bytes());
        if proof.len() != 32 {
            return Err(auth("wrong username or password"));
        }
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let derived: [u8; 32] = Sha256::digest(&client_key).into();
        if !constant_time_eq(&derived, &stored_key) {
            return Err(auth("wrong username or password"));
        }
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in a test, a panic is the failure report
mod tests {
    use super::*;

    fn credential(password: &str) -> StoredCredential {
        let salt = b"0123456789abcdef".to_vec();
        StoredCredential {
            salted_password: salted_password(password, &salt, MIN_ITERATIONS),
            salt,
            iterations: MIN_ITERATIONS,
        }
    }

    fn exchange(client_password: &str, client_cb: &[u8], server_cb: &[u8]) -> Result<()> {
        let mut client = ScramClient::new("ro,ot=", client_password);
        let server = ScramServer::start(&client.client_first(), |name| {
            (name == "ro,ot=").then(|| credential("secret"))
        })?;
        assert_eq!(server.username(), "ro,ot=");
        let client_final = client.client_final(server.server_first(), client_cb)?;
        let server_final = server.finish(&client_final, server_cb)?;
        client.verify_server_final(&server_final)
    }

    #[test]
    fn a_leader_asking_for_too_many_iterations_is_refused_before_computing_them() {
        let mut client = ScramClient::new("root", "secret");
        let nonce = format!("{}x", client.client_nonce);
        let started = std::time::Instant::now();
        let err = client
            .client_final(&format!("r={nonce},s=c2FsdA==,i={}", u32::MAX), &[7; 32])
            .unwrap_err();
        assert!(err.to_string().contains("PBKDF2 iterations"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn right_password_and_same_session_succeed() {
        exchange("secret", &[7; 32], &[7; 32]).unwrap();
    }

    #[test]
    fn a_remembered_salted_password_serves_only_its_own_password() {
        for _ in 0..2 {
            exchange("secret", &[7; 32], &[7; 32]).unwrap();
            assert!(exchange("guess", &[7; 32], &[7; 32]).is_err());
        }
        let salt = b"0123456789abcdef";
        for password in ["secret", "guess"] {
            assert_eq!(
                salted_password_cached(password, salt, MIN_ITERATIONS),
                salted_password(password, salt, MIN_ITERATIONS)
            );
        }
        assert_ne!(
            salted_password_cached("secret", b"another salt", MIN_ITERATIONS),
            salted_password_cached("secret", salt, MIN_ITERATIONS)
        );
    }

    #[test]
    fn wrong_password_is_refused() {
        let err = exchange("guess", &[7; 32], &[7; 32]).unwrap_err();
        assert!(
            err.to_string().contains("wrong username or password"),
            "{err}"
        );
    }

    #[test]
    fn a_proof_relayed_into_another_tls_session_is_refused() {
        let err = exchange("secret", &[7; 32], &[8; 32]).unwrap_err();
        assert!(
            err.to_string().contains("channel binding mismatch"),
            "{err}"
        );
    }

    #[test]
    fn an_impostor_leader_cannot_produce_the_server_signature() {
        let mut client = ScramClient::new("root", "secret");
        let impostor =
            ScramServer::start(&client.client_first(), |_| Some(credential("other"))).unwrap();
        let client_final = client
            .client_final(impostor.server_first(), &[1; 32])
            .unwrap();
        // The impostor cannot verify the proof, and a made-up signature fails at the client.
        assert!(impostor.finish(&client_final, &[1; 32]).is_err());
        assert!(client
            .verify_server_final("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .is_err());
    }

    #[test]
    fn unknown_user_and_malformed_messages_fail_cleanly() {
        let client = ScramClient::new("nobody", "x");
        let server = ScramServer::start(&client.client_first(), |_| None).unwrap();
        assert!(server.server_first().contains(",i=100000"));
        assert!(ScramServer::start("n,,n=root,r=abc", |_| None).is_err());
        assert!(ScramServer::start("p=tls-exporter,,garbage", |_| None).is_err());
        assert!(server.finish("c=,r=,p=", &[0; 32]).is_err());
        let mut client = ScramClient::new("root", "x");
        assert!(client
            .client_final("r=other,s=AAAA,i=5000", &[0; 32])
            .is_err());
        let weak = format!(
            "r={}x,s=AAAA,i=1",
            client.client_first_bare.split("r=").nth(1).unwrap()
        );
        assert!(client.client_final(&weak, &[0; 32]).is_err());
    }
}
