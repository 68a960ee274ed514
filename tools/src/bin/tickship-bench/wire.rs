//! The bench's own clients of the four systems: HTTP/1.1 for tickship, PostgreSQL's simple query
//! protocol, MariaDB's text protocol and Redis's RESP. Each is the minimum the scenarios need,
//! written here rather than taken from a driver so that every client connects *from* 127.0.0.3:
//! the iptables counters that measure replication traffic then leave the load out by address
//! alone, for all four systems in the same way.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The source address of every connection the bench's clients open.
pub const CLIENT_ADDR: &str = "127.0.0.3";

/// A TCP connection to `port` on 127.0.0.1 from [`CLIENT_ADDR`].
pub fn connect(port: u16) -> Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let local: SocketAddr = format!("{CLIENT_ADDR}:0").parse()?;
    socket.bind(&local.into())?;
    let remote: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    socket
        .connect_timeout(&remote.into(), Duration::from_secs(10))
        .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    Ok(stream)
}

/// A keep-alive HTTP/1.1 connection with basic authentication.
pub struct Http {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    auth: String,
    port: u16,
}

impl Http {
    pub fn new(port: u16, username: &str, password: &str) -> Result<Http> {
        use base64::Engine;
        let stream = connect(port)?;
        Ok(Http {
            writer: stream.try_clone()?,
            reader: BufReader::with_capacity(1 << 16, stream),
            auth: base64::engine::general_purpose::STANDARD
                .encode(format!("{username}:{password}")),
            port,
        })
    }

    /// Sends one request and reads the whole answer: (status, body).
    pub fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Basic {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.port,
            self.auth,
            body.len()
        );
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad HTTP status line {line:?}"))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed inside the HTTP headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "content-length" {
                    length = Some(value.parse::<usize>()?);
                } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                let start = out.len();
                out.resize(start + size, 0);
                self.reader.read_exact(&mut out[start..])?;
                line.clear();
                self.reader.read_line(&mut line)?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(length) = length {
            out.resize(length, 0);
            self.reader.read_exact(&mut out)?;
        }
        Ok((status, out))
    }
}

/// PostgreSQL's simple query protocol, trust authentication.
pub struct Pg {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Pg {
    pub fn new(port: u16, user: &str, database: &str) -> Result<Pg> {
        let stream = connect(port)?;
        let mut pg = Pg {
            writer: stream.try_clone()?,
            reader: BufReader::with_capacity(1 << 16, stream),
        };
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for s in ["user", user, "database", database] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        pg.writer.write_all(&message)?;
        loop {
            let (kind, body) = pg.message()?;
            match kind {
                b'R' if body.get(..4) == Some(&[0, 0, 0, 0]) => {}
                b'R' => bail!(
                    "PostgreSQL asks for authentication the bench does not do (trust expected)"
                ),
                b'E' => bail!("PostgreSQL refused the connection: {}", pg_error(&body)),
                b'Z' => return Ok(pg),
                _ => {}
            }
        }
    }

    fn message(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.reader.read_exact(&mut head)?;
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=1 << 30).contains(&length) {
            bail!("PostgreSQL message of length {length}");
        }
        let mut body = vec![0u8; length - 4];
        self.reader.read_exact(&mut body)?;
        Ok((head[0], body))
    }

    /// Runs `sql`; returns the first column of every row, as text.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Option<String>>> {
        let mut message = vec![b'Q'];
        message.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        message.extend_from_slice(sql.as_bytes());
        message.push(0);
        self.writer.write_all(&message)?;
        let (mut rows, mut error) = (Vec::new(), None);
        loop {
            let (kind, body) = self.message()?;
            match kind {
                b'D' => {
                    let length = body
                        .get(2..6)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .context("short DataRow")?;
                    rows.push(if length < 0 {
                        None
                    } else {
                        Some(
                            String::from_utf8_lossy(
                                body.get(6..6 + length as usize).context("short DataRow")?,
                            )
                            .into_owned(),
                        )
                    });
                }
                b'E' => error = Some(pg_error(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => bail!("PostgreSQL: {e} (in {:.80})", sql),
            None => Ok(rows),
        }
    }
}

fn pg_error(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&b'M'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_else(|| "unknown error".into())
}

/// MariaDB's client protocol (text queries), for a user without a password.
pub struct My {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl My {
    pub fn new(port: u16, user: &str) -> Result<My> {
        let stream = connect(port)?;
        let mut my = My {
            writer: stream.try_clone()?,
            reader: BufReader::with_capacity(1 << 16, stream),
        };
        let (_, greeting) = my.packet()?;
        if greeting.first() == Some(&0xff) {
            bail!("MariaDB refused the connection: {}", my_error(&greeting));
        }
        // LONG_PASSWORD | CONNECT_WITH_DB(no) | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION |
        // PLUGIN_AUTH
        let caps: u32 = 0x1 | 0x200 | 0x2000 | 0x8000 | 0x8_0000;
        let mut response = caps.to_le_bytes().to_vec();
        response.extend_from_slice(&(1u32 << 24).to_le_bytes());
        response.push(45); // utf8mb4_general_ci
        response.extend_from_slice(&[0u8; 23]);
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.push(0); // empty password: no scramble
        response.extend_from_slice(b"mysql_native_password\0");
        my.send(1, &response)?;
        loop {
            let (seq, answer) = my.packet()?;
            match answer.first() {
                Some(0x00) => return Ok(my),
                Some(0xff) => bail!("MariaDB refused the login: {}", my_error(&answer)),
                // An authentication switch: an empty password answers any plugin with nothing.
                Some(0xfe) => my.send(seq.wrapping_add(1), &[])?,
                _ => bail!("MariaDB: unexpected answer to the login"),
            }
        }
    }

    fn send(&mut self, seq: u8, payload: &[u8]) -> Result<()> {
        if payload.len() >= 0xff_ffff {
            bail!(
                "a MariaDB packet of {} bytes needs splitting, which the bench does not do",
                payload.len()
            );
        }
        let mut head = (payload.len() as u32).to_le_bytes();
        head[3] = seq;
        self.writer.write_all(&head)?;
        self.writer.write_all(payload)?;
        Ok(())
    }

    fn packet(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 4];
        self.reader.read_exact(&mut head)?;
        let length = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok((head[3], body))
    }

    /// Runs `sql`; returns the first column of every row, as text.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Option<String>>> {
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(0x03);
        payload.extend_from_slice(sql.as_bytes());
        self.send(0, &payload)?;
        let (_, first) = self.packet()?;
        match first.first() {
            Some(0x00) => return Ok(Vec::new()),
            Some(0xff) => bail!("MariaDB: {} (in {:.80})", my_error(&first), sql),
            _ => {}
        }
        let (columns, _) = lenenc(&first, 0).context("bad column count")?;
        for _ in 0..columns {
            self.packet()?;
        }
        let (_, eof) = self.packet()?;
        if eof.first() != Some(&0xfe) {
            bail!("MariaDB: no EOF after the column definitions");
        }
        let mut rows = Vec::new();
        loop {
            let (_, row) = self.packet()?;
            match row.first() {
                Some(0xfe) if row.len() < 9 => return Ok(rows),
                Some(0xff) => bail!("MariaDB: {}", my_error(&row)),
                Some(0xfb) => rows.push(None),
                _ => {
                    let (length, at) = lenenc(&row, 0).context("bad row")?;
                    let text = row.get(at..at + length as usize).context("short row")?;
                    rows.push(Some(String::from_utf8_lossy(text).into_owned()));
                }
            }
        }
    }
}

fn lenenc(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let first = *b.get(at)?;
    let n = |k: usize| -> Option<(u64, usize)> {
        let mut v = 0u64;
        for i in 0..k {
            v |= (*b.get(at + 1 + i)? as u64) << (8 * i);
        }
        Some((v, at + 1 + k))
    };
    match first {
        0..=0xfa => Some((first as u64, at + 1)),
        0xfc => n(2),
        0xfd => n(3),
        0xfe => n(8),
        _ => None,
    }
}

fn my_error(p: &[u8]) -> String {
    let code = p
        .get(1..3)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .unwrap_or(0);
    let text = if p.get(3) == Some(&b'#') {
        p.get(9..)
    } else {
        p.get(3..)
    };
    format!(
        "error {code}: {}",
        String::from_utf8_lossy(text.unwrap_or_default())
    )
}

/// Redis's RESP.
pub struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
}

/// A RESP answer (an array's items are read only through Debug, in error messages).
#[derive(Debug)]
#[allow(dead_code)]
pub enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Resp {
    pub fn new(port: u16) -> Result<Resp> {
        let stream = connect(port)?;
        Ok(Resp {
            writer: stream.try_clone()?,
            reader: BufReader::with_capacity(1 << 16, stream),
            out: Vec::new(),
        })
    }

    /// Runs one command; an error reply is an error.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&self.out)?;
        self.reply()
    }

    fn reply(&mut self) -> Result<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.len() < 3 {
            bail!("Redis closed the connection");
        }
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        Ok(match line[0] {
            b'+' => Reply::Status(text),
            b'-' => bail!("Redis: {text}"),
            b':' => Reply::Int(text.parse()?),
            b'$' => {
                let n: i64 = text.parse()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0u8; n as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    data.truncate(n as usize);
                    Reply::Bulk(Some(data))
                }
            }
            b'*' => {
                let n: i64 = text.parse()?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(self.reply()?);
                }
                Reply::Array(items)
            }
            other => bail!("Redis: unexpected reply type {:?}", other as char),
        })
    }

    pub fn int(&mut self, args: &[&[u8]]) -> Result<i64> {
        match self.call(args)? {
            Reply::Int(n) => Ok(n),
            other => bail!("Redis: expected an integer, got {other:?}"),
        }
    }

    pub fn text(&mut self, args: &[&[u8]]) -> Result<String> {
        match self.call(args)? {
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Reply::Status(s) => Ok(s),
            other => bail!("Redis: expected text, got {other:?}"),
        }
    }
}
