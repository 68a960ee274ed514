//! Authentication: HTTP Basic and JWT (HS256) for user `root`.
//!
//! The server keeps only a salted PBKDF2-HMAC-SHA256 hash of the password (`credentials.json`
//! in the data directory). Deriving it costs tens of milliseconds on purpose, so credentials that
//! verified once are remembered (by their SHA-256, never in clear) for a few minutes: Basic auth
//! on every request stays cheap. Tokens from `/_open/auth` are HS256 JWTs signed with a secret
//! kept in the data directory (mode 0600), carrying `iss`, `preferred_username`, `iat` and `exp`
//! (python-arango requires `exp`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::util::{random_bytes, write_private};

pub const ROOT: &str = "root";
const PBKDF2_ROUNDS: u32 = 100_000;
/// How long a verified Basic credential is remembered.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
const VERIFIED_MAX: usize = 1024;
/// Lifetime of tokens from `/_open/auth`.
pub const JWT_TTL: Duration = Duration::from_secs(3600);

/// Where the root password comes from, in order of precedence.
#[derive(Clone, Debug, Default)]
pub struct PasswordSource {
    pub flag: Option<String>,
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

impl PasswordSource {
    /// The password given, if any: the flag, else the environment, else the file's first line.
    /// `tickshipd` and `tickship` read it the same way.
    pub fn resolve(&self) -> Result<Option<String>> {
        match (&self.flag, &self.env, &self.file) {
            (Some(password), _, _) | (None, Some(password), _) => Ok(Some(password.clone())),
            (None, None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("read the password file {}", file.display()))?;
                Ok(Some(
                    text.lines()
                        .next()
                        .unwrap_or("")
                        .trim_end_matches('\r')
                        .to_string(),
                ))
            }
            (None, None, None) => Ok(None),
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header (or one of an unknown scheme).
    NoCredentials,
    /// Credentials that do not match, or an invalid or expired token.
    WrongCredentials,
}

#[derive(Serialize, Deserialize)]
struct StoredUser {
    salt: String,
    rounds: u32,
    hash: String,
}

/// The credentials and the JWT secret.
pub struct Auth {
    enabled: bool,
    salt: Vec<u8>,
    rounds: u32,
    hash: Vec<u8>,
    jwt_secret: Vec<u8>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

fn derive(password: &str, salt: &[u8], rounds: u32) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, rounds, &mut out);
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Loads or creates the credentials in `dir`. A password given explicitly (flag, environment,
    /// file) replaces the stored one; with none given and none stored, one is generated, written
    /// to `dir/ROOT_PASSWORD` (0600) and its location printed.
    pub fn open(dir: &Path, enabled: bool, source: &PasswordSource) -> Result<Auth> {
        let secret_path = dir.join("jwt-secret");
        let jwt_secret = match std::fs::read(&secret_path) {
            Ok(secret) if secret.len() >= 32 => secret,
            Ok(_) => bail!("{} is too short to be a JWT secret", secret_path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = random_bytes::<32>().to_vec();
                write_private(&secret_path, &secret)?;
                secret
            }
            Err(e) => return Err(e).with_context(|| format!("read {}", secret_path.display())),
        };
        let credentials_path = dir.join("credentials.json");
        let given = source.resolve()?;
        let stored = match std::fs::read(&credentials_path) {
            Ok(bytes) => {
                let users: HashMap<String, StoredUser> = serde_json::from_slice(&bytes)
                    .with_context(|| format!("parse {}", credentials_path.display()))?;
                users
                    .into_iter()
                    .find(|(name, _)| name == ROOT)
                    .map(|(_, user)| user)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("read {}", credentials_path.display()))
            }
        };
        let password = match (given, stored) {
            (Some(password), _) => Some(password),
            (None, Some(user)) => {
                let salt = STANDARD.decode(&user.salt).context("stored salt")?;
                let hash = STANDARD.decode(&user.hash).context("stored hash")?;
                return Ok(Auth::new(enabled, salt, user.rounds, hash, jwt_secret));
            }
            (None, None) if enabled => {
                let password = URL_SAFE_NO_PAD.encode(random_bytes::<18>());
                let path = dir.join("ROOT_PASSWORD");
                write_private(&path, format!("{password}\n").as_bytes())?;
                println!(
                    "generated a password for user root; it is in {} (readable by its owner only)",
                    path.display()
                );
                Some(password)
            }
            (None, None) => None,
        };
        let salt = random_bytes::<16>().to_vec();
        let hash = derive(password.as_deref().unwrap_or(""), &salt, PBKDF2_ROUNDS);
        let users = HashMap::from([(
            ROOT.to_string(),
            StoredUser {
                salt: STANDARD.encode(&salt),
                rounds: PBKDF2_ROUNDS,
                hash: STANDARD.encode(&hash),
            },
        )]);
        write_private(&credentials_path, &serde_json::to_vec_pretty(&users)?)?;
        Ok(Auth::new(enabled, salt, PBKDF2_ROUNDS, hash, jwt_secret))
    }

    fn new(enabled: bool, salt: Vec<u8>, rounds: u32, hash: Vec<u8>, jwt_secret: Vec<u8>) -> Auth {
        Auth {
            enabled,
            salt,
            rounds,
            hash,
            jwt_secret,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// The SCRAM credential of `username` (followers authenticate with it): the stored PBKDF2
    /// hash is SCRAM's salted password.
    pub fn scram_credential(
        &self,
        username: &str,
    ) -> Option<tickship_net::scram::StoredCredential> {
        if username != ROOT {
            return None;
        }
        let salted_password: [u8; 32] = self.hash.as_slice().try_into().ok()?;
        Some(tickship_net::scram::StoredCredential {
            salt: self.salt.clone(),
            iterations: self.rounds,
            salted_password,
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `username`/`password` are root's credentials.
    pub fn check_password(&self, username: &str, password: &str) -> bool {
        if username != ROOT {
            return false;
        }
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(username)
            .chain_update([0])
            .chain_update(password)
            .finalize()
            .into();
        {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified
                .get(&fingerprint)
                .is_some_and(|at| at.elapsed() < VERIFIED_TTL)
            {
                return true;
            }
        }
        if !constant_time_eq(&derive(password, &self.salt, self.rounds), &self.hash) {
            return false;
        }
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.retain(|_, at| at.elapsed() < VERIFIED_TTL);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(fingerprint, Instant::now());
        true
    }

    /// A signed token for `username`, valid for `JWT_TTL`.
    pub fn issue_token(&self, username: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": "arangodb",
            "preferred_username": username,
            "iat": now,
            "exp": now + JWT_TTL.as_secs(),
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.jwt_secret).expect("HMAC takes any key length");
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }

    /// The user a token names, if its signature is ours and it has not expired.
    pub fn verify_token(&self, token: &str) -> Option<String> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("alg")?.as_str()? != "HS256" {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let expected = self.sign(format!("{}.{claims}", token.split('.').next()?).as_bytes());
        if !constant_time_eq(&signature, &expected) {
            return None;
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if claims.get("exp")?.as_u64()? <= now {
            return None;
        }
        Some(claims.get("preferred_username")?.as_str()?.to_string())
    }

    /// Whether an `Authorization` header value grants access, and if not, why.
    pub fn authorize(&self, header: Option<&str>) -> Result<(), Refusal> {
        if !self.enabled {
            return Ok(());
        }
        let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Err(Refusal::NoCredentials);
        };
        let Some((scheme, value)) = header.split_once(' ') else {
            return Err(Refusal::NoCredentials);
        };
        let granted = if scheme.eq_ignore_ascii_case("basic") {
            STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|decoded| String::from_utf8(decoded).ok())
                .is_some_and(|decoded| {
                    decoded
                        .split_once(':')
                        .is_some_and(|(user, password)| self.check_password(user, password))
                })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            self.verify_token(value.trim())
                .is_some_and(|user| user == ROOT)
        } else {
            return Err(Refusal::NoCredentials);
        };
        if granted {
            Ok(())
        } else {
            Err(Refusal::WrongCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn auth(dir: &Path, password: &str) -> Auth {
        let source = PasswordSource {
            flag: Some(password.into()),
            ..Default::default()
        };
        Auth::open(dir, true, &source).expect("auth")
    }

    // Goal: Basic credentials are checked against a salted hash (never stored in clear), and a
    // restart without a password keeps the stored one.
    #[test]
    fn basic_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = auth(dir.path(), "s3cret");
        let basic =
            |user: &str, pw: &str| format!("Basic {}", STANDARD.encode(format!("{user}:{pw}")));
        assert_eq!(auth.authorize(Some(&basic("root", "s3cret"))), Ok(()));
        assert_eq!(
            auth.authorize(Some(&basic("root", "s3cret"))),
            Ok(()),
            "cached"
        );
        let wrong = Err(Refusal::WrongCredentials);
        assert_eq!(auth.authorize(Some(&basic("root", "wrong"))), wrong);
        assert_eq!(auth.authorize(Some(&basic("admin", "s3cret"))), wrong);
        assert_eq!(auth.authorize(Some("Basic !!!")), wrong);
        assert_eq!(auth.authorize(None), Err(Refusal::NoCredentials));
        assert_eq!(auth.authorize(Some("  ")), Err(Refusal::NoCredentials));
        assert_eq!(
            auth.authorize(Some("Negotiate x")),
            Err(Refusal::NoCredentials)
        );
        let stored = std::fs::read_to_string(dir.path().join("credentials.json")).expect("stored");
        assert!(!stored.contains("s3cret"));
        let mode = std::fs::metadata(dir.path().join("credentials.json"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Auth::open(dir.path(), true, &PasswordSource::default()).expect("reopen");
        assert_eq!(again.authorize(Some(&basic("root", "s3cret"))), Ok(()));
    }

    // Goal: tokens verify only with our signature and before `exp`, in either scheme spelling.
    #[test]
    fn jwt_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = auth(dir.path(), "pw");
        let token = auth.issue_token("root");
        assert_eq!(auth.verify_token(&token), Some("root".to_string()));
        assert_eq!(auth.authorize(Some(&format!("bearer {token}"))), Ok(()));
        assert_eq!(auth.authorize(Some(&format!("Bearer {token}"))), Ok(()));
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(
            auth.authorize(Some(&format!("Bearer {forged}"))),
            Err(Refusal::WrongCredentials)
        );
        let other = tempfile::tempdir().expect("tempdir");
        let stranger = super::tests::auth(other.path(), "pw");
        assert_eq!(
            stranger.verify_token(&token),
            None,
            "another server's secret"
        );
        let claims =
            serde_json::json!({"iss":"arangodb","preferred_username":"root","iat":1,"exp":2});
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let expired = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(auth.sign(input.as_bytes()))
        );
        assert_eq!(auth.verify_token(&expired), None);
    }

    // Goal: with no password anywhere, one is generated into a 0600 file and works.
    #[test]
    fn generated_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = Auth::open(dir.path(), true, &PasswordSource::default()).expect("auth");
        let path = dir.path().join("ROOT_PASSWORD");
        let password = std::fs::read_to_string(&path)
            .expect("generated")
            .trim()
            .to_string();
        assert!(password.len() >= 20);
        assert_eq!(
            std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o600
        );
        assert!(auth.check_password("root", &password));
    }
}
