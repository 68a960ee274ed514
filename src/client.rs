//! A blocking HTTP client for one tickshipd, speaking ArangoDB's dialect: Basic credentials (or
//! none), JSON bodies, ArangoDB error answers turned into errors that carry their number. Used by
//! the `tickship` CLI and the tools.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

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
            bail!(
                "{method} {path}: {} (error {}, HTTP 401)\n{}",
                value["errorMessage"].as_str().unwrap_or(&text),
                value["errorNum"],
                if self.auth.is_none() {
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
                }
            );
        }
        if status >= 400 {
            bail!(
                "{method} {path}: {} (error {}, HTTP {status})",
                value["errorMessage"].as_str().unwrap_or(&text),
                value["errorNum"]
            );
        }
        Ok(value)
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
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", content_type);
        if let Some(auth) = &self.auth {
            request = request.header("authorization", auth);
        }
        let request = request.body(body).context("build request")?;
        let response = self
            .agent
            .run(request)
            .with_context(|| format!("{method} {}{path}", self.base))?;
        let status = response.status().as_u16();
        let more = response
            .headers()
            .get("x-arango-replication-checkmore")
            .and_then(|v| v.to_str().ok())
            == Some("true");
        let bytes = response
            .into_body()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .with_context(|| format!("read the answer to {method} {path}"))?;
        if status >= 400 {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            bail!(
                "{method} {path}: {} (error {}, HTTP {status})",
                value["errorMessage"].as_str().map_or_else(
                    || String::from_utf8_lossy(&bytes).into_owned(),
                    str::to_owned
                ),
                value["errorNum"]
            );
        }
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
        let mut request = ureq::http::Request::builder()
            .method("GET")
            .uri(format!("{}{path}", self.base));
        if let Some(auth) = &self.auth {
            request = request.header("authorization", auth);
        }
        let request = request.body(()).context("build request")?;
        let response = self
            .agent
            .run(request)
            .with_context(|| format!("GET {}{path}", self.base))?;
        let status = response.status().as_u16();
        let more = response
            .headers()
            .get("x-arango-replication-checkmore")
            .and_then(|v| v.to_str().ok())
            == Some("true");
        let mut reader = response
            .into_body()
            .into_with_config()
            .limit(u64::MAX)
            .reader();
        if status >= 400 {
            let mut text = String::new();
            let _ = reader.read_to_string(&mut text);
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            bail!(
                "GET {path}: {} (error {}, HTTP {status})",
                value["errorMessage"].as_str().unwrap_or(&text),
                value["errorNum"]
            );
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

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn raw(&self, method: &str, path: &str, body: Option<String>) -> Result<(u16, String)> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(auth) = &self.auth {
            request = request.header("authorization", auth);
        }
        let request = request
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
