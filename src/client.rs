//! A blocking HTTP client for one tickshipd, speaking ArangoDB's dialect: Basic credentials (or
//! none), JSON bodies, ArangoDB error answers turned into errors that carry their number. Used by
//! the `tickship` CLI and the tools.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

/// The most an answer's stated length reserves before its bytes arrive.
const PRESIZE_MAX: usize = 64 << 20;

/// An HTTP client for one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    endpoint: String,
    /// `None`: no password was given, and none is sent.
    auth: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(
        endpoint: &str,
        database: &str,
        username: &str,
        password: Option<&str>,
    ) -> Result<Client> {
        use base64::Engine;
        let host = crate::config::plain_endpoint_host(endpoint)
            .with_context(|| format!("--server.endpoint {endpoint:?}"))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(600)))
            .build()
            .into();
        Ok(Client {
            base: format!("http://{}/_db/{database}", host.trim_end_matches('/')),
            endpoint: endpoint.to_string(),
            auth: password.map(|password| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                )
            }),
            agent,
        })
    }

    /// Sends a request; an ArangoDB error answer becomes an error with its number and message.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, text) = self.raw(method, path, body.map(|b| b.to_string()))?;
        if status == 204 && text.is_empty() {
            return Ok(Value::Null);
        }
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{method} {path} answered {status} with non-JSON: {text}"))?;
        if status == 401 {
            let hint = if self.auth.is_none() {
                format!(
                    "No password was given for {}: pass --server.password PW or \
                     --server.password-file FILE, or set TICKSHIP_ROOT_PASSWORD (a \
                     tickshipd started without a password wrote one to \
                     DIR/ROOT_PASSWORD).",
                    self.endpoint
                )
            } else {
                format!(
                    "The password given is not the one of the server at {}.",
                    self.endpoint
                )
            };
            return Err(ServerError::new(method, path, status, &value, &text, Some(hint)).into());
        }
        if status >= 400 {
            return Err(ServerError::new(method, path, status, &value, &text, None).into());
        }
        Ok(value)
    }

    /// A request to `path` of this server, with its credentials.
    fn builder(&self, method: &str, path: &str) -> ureq::http::request::Builder {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        match &self.auth {
            Some(auth) => request.header("authorization", auth),
            None => request,
        }
    }

    /// Sends `body` with `content_type` and returns the status, the answer's bytes and its
    /// `x-arango-replication-checkmore` header; an ArangoDB error answer becomes an error.
    pub fn bytes(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(u16, Vec<u8>, bool)> {
        let (status, bytes, mut values) = self.send_bytes(
            method,
            path,
            body,
            &[("content-type", content_type)],
            &["x-arango-replication-checkmore"],
        )?;
        let more = values.pop().flatten().as_deref() == Some("true");
        Ok((status, bytes, more))
    }

    /// `GET path`, its body handed to `sink` piece by piece as it arrives (no whole-body
    /// buffer); returns the status, the bytes received and the `checkmore` header.
    pub fn get_streamed(
        &self,
        path: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<(u16, u64, bool)> {
        use std::io::Read;
        let request = self
            .builder("GET", path)
            .body(())
            .context("build request")?;
        let response = self
            .agent
            .run(request)
            .with_context(|| format!("GET {}{path}", self.base))?;
        let status = response.status().as_u16();
        let more = check_more(&response);
        let mut reader = response
            .into_body()
            .into_with_config()
            .limit(u64::MAX)
            .reader();
        if status >= 400 {
            let mut text = String::new();
            let _ = reader.read_to_string(&mut text);
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(ServerError::new("GET", path, status, &value, &text, None).into());
        }
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buffer)
                .with_context(|| format!("read the answer to GET {path}"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            sink(&buffer[..n])?;
        }
        Ok((status, total, more))
    }

    /// Sends a request as an async job (`x-arango-async: store`) and returns the job's id, whose
    /// answer `PUT /_api/job/{id}` fetches once it is done (`call` gives `Null` until then).
    pub fn start_job(&self, method: &str, path: &str, body: Option<Value>) -> Result<String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default().into_bytes();
        let (status, text, mut id) = self.send_bytes(
            method,
            path,
            body,
            &[
                ("content-type", "application/json"),
                ("x-arango-async", "store"),
            ],
            &["x-arango-async-id"],
        )?;
        match (status, id.pop().flatten()) {
            (202, Some(id)) => Ok(id),
            (status, _) => anyhow::bail!(
                "{method} {path} as a job answered {status} without a job id: {}",
                String::from_utf8_lossy(&text)
            ),
        }
    }

    /// The same server and credentials, for requests in database `database`.
    pub fn in_database(&self, database: &str) -> Client {
        let root = self
            .base
            .rsplit_once("/_db/")
            .map_or(self.base.as_str(), |(root, _)| root);
        Client {
            base: format!("{root}/_db/{database}"),
            ..self.clone()
        }
    }

    /// Sends `body` (JSON) and returns the status, the answer's bytes and the values of its
    /// headers `names`; an ArangoDB error answer becomes a `ServerError`.
    pub fn bytes_with_headers(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        names: &[&str],
    ) -> Result<(u16, Vec<u8>, Vec<Option<String>>)> {
        self.send_bytes(
            method,
            path,
            body,
            &[("content-type", "application/json")],
            names,
        )
    }

    /// Sends `body` with request headers `headers`; the status, the answer's bytes and the
    /// values of its headers `names`. An ArangoDB error answer becomes a `ServerError`.
    fn send_bytes(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
        names: &[&str],
    ) -> Result<(u16, Vec<u8>, Vec<Option<String>>)> {
        let request = headers
            .iter()
            .fold(self.builder(method, path), |request, (name, value)| {
                request.header(*name, *value)
            })
            .body(body)
            .context("build request")?;
        let response = self
            .agent
            .run(request)
            .with_context(|| format!("{method} {}{path}", self.base))?;
        let status = response.status().as_u16();
        let values = names
            .iter()
            .map(|name| {
                response
                    .headers()
                    .get(*name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .collect();
        // Sized from the answer's length where it has one: grown by doubling, a sync's answers of
        // up to 16 MiB were copied and faulted in again and again (a tenth of its CPU). The
        // length is the peer's word, so it sizes at most `PRESIZE_MAX`.
        let expected = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let mut bytes = Vec::with_capacity(expected.min(PRESIZE_MAX));
        std::io::Read::read_to_end(
            &mut response.into_body().with_config().limit(u64::MAX).reader(),
            &mut bytes,
        )
        .with_context(|| format!("read the answer to {method} {path}"))?;
        if status >= 400 {
            let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let text = String::from_utf8_lossy(&bytes);
            return Err(ServerError::new(method, path, status, &parsed, &text, None).into());
        }
        Ok((status, bytes, values))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn raw(&self, method: &str, path: &str, body: Option<String>) -> Result<(u16, String)> {
        let request = self
            .builder(method, path)
            .header("content-type", "application/json")
            .body(body.unwrap_or_default())
            .context("build request")?;
        let response = self
            .agent
            .run(request)
            .with_context(|| format!("{method} {}{path}", self.base))?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string()?;
        Ok((status, text))
    }
}

/// An error answer of the server: its HTTP status and ArangoDB error number, for callers that
/// act on them (a sync retries a lost batch, stops on wrong credentials).
#[derive(Debug)]
pub struct ServerError {
    pub status: u16,
    /// The answer's `errorNum` (0 if it had none).
    pub error_num: u32,
    pub message: String,
    text: String,
}

impl ServerError {
    fn new(
        method: &str,
        path: &str,
        status: u16,
        value: &Value,
        raw: &str,
        hint: Option<String>,
    ) -> ServerError {
        let message = value["errorMessage"].as_str().unwrap_or(raw).to_string();
        let mut text = format!(
            "{method} {path}: {message} (error {}, HTTP {status})",
            value["errorNum"]
        );
        if let Some(hint) = hint {
            text.push('\n');
            text.push_str(&hint);
        }
        ServerError {
            status,
            error_num: value["errorNum"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            message,
            text,
        }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ServerError {}

/// An answer's `x-arango-replication-checkmore`: whether more follows.
fn check_more<B>(response: &ureq::http::Response<B>) -> bool {
    response
        .headers()
        .get("x-arango-replication-checkmore")
        .and_then(|v| v.to_str().ok())
        == Some("true")
}
