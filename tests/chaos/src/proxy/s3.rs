//! A fault-injecting HTTP proxy in front of the S3 server: the job's warehouse (iceberg FileIO) and
//! checkpoint store (`object_store`) both talk to S3 through it, so storage faults need no hook in
//! the pipeline.
//!
//! One request per client connection (every response is rewritten to `Connection: close`, so no
//! client keeps a pooled connection the proxy could close under it). While faults are on, each
//! request draws a fault with probability `rate`:
//!
//! | fault | what the client sees | did the request happen? |
//! |---|---|---|
//! | `s3_503` | `503 SlowDown` | no |
//! | `s3_500_after_apply` | `500 InternalError` | **yes** (the reply lied) |
//! | `s3_reset_after_apply` | connection reset, no reply | **yes** (reply lost) |
//! | `s3_partial_upload` | connection reset after half the body | no (the server discards it) |
//! | `s3_stall_reset` | nothing for 1-6 s, then a reset | no |
//! | `s3_slow` | the right answer, 0.3-2 s late | yes |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fault kinds, as named in the report.
pub const KINDS: [&str; 6] = [
    "s3_503",
    "s3_500_after_apply",
    "s3_reset_after_apply",
    "s3_partial_upload",
    "s3_stall_reset",
    "s3_slow",
];

/// Largest request head accepted.
const HEAD_MAX: usize = 64 * 1024;
/// Largest request body accepted (a Parquet file of a test job is far smaller).
const BODY_MAX: usize = 512 * 1024 * 1024;

/// Shared control of the proxy.
pub struct S3Faults {
    on: AtomicBool,
    rate_ppm: AtomicU32,
    rng: Mutex<ChaCha8Rng>,
    /// Requests seen.
    pub requests: AtomicU64,
    injected: Mutex<BTreeMap<&'static str, u64>>,
}

impl S3Faults {
    /// Turns faults on at `rate` (0..=1) of requests.
    pub fn enable(&self, rate: f64) {
        self.rate_ppm
            .store((rate.clamp(0.0, 1.0) * 1e6) as u32, Ordering::SeqCst);
        self.on.store(true, Ordering::SeqCst);
    }

    /// Back to a plain pass-through.
    pub fn disable(&self) {
        self.on.store(false, Ordering::SeqCst);
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.injected.lock().expect("lock").clone()
    }

    fn draw(&self, has_body: bool) -> Option<(&'static str, Duration)> {
        if !self.on.load(Ordering::SeqCst) {
            return None;
        }
        let mut rng = self.rng.lock().expect("lock");
        if rng.random_range(0..1_000_000) >= self.rate_ppm.load(Ordering::SeqCst) {
            return None;
        }
        let mut kind = KINDS[rng.random_range(0..KINDS.len())];
        if kind == "s3_partial_upload" && !has_body {
            kind = "s3_reset_after_apply";
        }
        let delay = match kind {
            "s3_stall_reset" => Duration::from_millis(rng.random_range(1_000..6_000)),
            "s3_slow" => Duration::from_millis(rng.random_range(300..2_000)),
            _ => Duration::ZERO,
        };
        *self.injected.lock().expect("lock").entry(kind).or_default() += 1;
        Some((kind, delay))
    }
}

/// A running proxy.
pub struct S3Proxy {
    /// Port the job should use as its S3 endpoint.
    pub port: u16,
    /// Fault control.
    pub faults: Arc<S3Faults>,
}

impl S3Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16, seed: u64) -> anyhow::Result<S3Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let faults = Arc::new(S3Faults {
            on: AtomicBool::new(false),
            rate_ppm: AtomicU32::new(0),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            requests: AtomicU64::new(0),
            injected: Mutex::new(BTreeMap::new()),
        });
        let f = faults.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let f = f.clone();
                tokio::spawn(async move {
                    let _ = handle(client, upstream, &f).await;
                });
            }
        });
        Ok(S3Proxy { port, faults })
    }
}

/// Closes a socket with a TCP reset instead of an orderly FIN.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

struct Request {
    head: Vec<u8>,
    body: Vec<u8>,
}

async fn read_request(client: &mut TcpStream) -> anyhow::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let head_len = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(n) = req.parse(&buf)? {
            break n;
        }
        anyhow::ensure!(buf.len() < HEAD_MAX, "request head too large");
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..head_len])?;
    let mut content_length = 0usize;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)?.trim().parse()?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked");
        } else if h.name.eq_ignore_ascii_case("expect") {
            anyhow::bail!("Expect: 100-continue is not supported by the chaos proxy");
        }
    }
    let mut rest = buf.split_off(head_len);
    let head = buf;
    if chunked {
        // Keep the raw chunked framing; read until the terminating zero-size chunk and trailers.
        loop {
            if chunked_complete(&rest)? {
                break;
            }
            anyhow::ensure!(rest.len() < BODY_MAX, "request body too large");
            let n = client.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "client closed mid-body");
            rest.extend_from_slice(&chunk[..n]);
        }
    } else {
        anyhow::ensure!(content_length <= BODY_MAX, "request body too large");
        while rest.len() < content_length {
            let n = client.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "client closed mid-body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(content_length);
    }
    Ok(Some(Request {
        head: rewrite_connection_close(&head),
        body: rest,
    }))
}

/// Whether `b` holds a complete chunked body (ends with the zero chunk and an empty trailer).
fn chunked_complete(b: &[u8]) -> anyhow::Result<bool> {
    let mut i = 0;
    loop {
        let Some(eol) = b[i..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(false);
        };
        let line = std::str::from_utf8(&b[i..i + eol])?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)?;
        i += eol + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let Some(e) = b[i..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(false);
                };
                i += e + 2;
                if e == 0 {
                    return Ok(true);
                }
            }
        }
        if b.len() < i + size + 2 {
            return Ok(false);
        }
        i += size + 2;
    }
}

/// Replaces any `Connection` header of an HTTP head with `Connection: close`.
fn rewrite_connection_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(text.len() + 20);
    let mut lines = text.split("\r\n");
    if let Some(first) = lines.next() {
        out.push_str(first);
        out.push_str("\r\n");
    }
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn forward(req: &Request, upstream: u16) -> anyhow::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream)).await?;
    up.write_all(&req.head).await?;
    up.write_all(&req.body).await?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await?;
    anyhow::ensure!(!resp.is_empty(), "empty answer from S3");
    Ok(resp)
}

/// The response with its head rewritten to `Connection: close`.
fn close_response(resp: &[u8]) -> Vec<u8> {
    match resp.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => {
            let mut out = rewrite_connection_close(&resp[..end + 4]);
            out.extend_from_slice(&resp[end + 4..]);
            out
        }
        None => resp.to_vec(),
    }
}

fn error_response(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by recon-chaos</Message><RequestId>chaos</RequestId></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn handle(mut client: TcpStream, upstream: u16, faults: &S3Faults) -> anyhow::Result<()> {
    let Some(req) = read_request(&mut client).await? else {
        return Ok(());
    };
    faults.requests.fetch_add(1, Ordering::Relaxed);
    match faults.draw(!req.body.is_empty()) {
        None => {
            let resp = forward(&req, upstream).await?;
            client.write_all(&close_response(&resp)).await?;
            client.shutdown().await.ok();
        }
        Some(("s3_503", _)) => {
            client
                .write_all(&error_response("503 Service Unavailable", "SlowDown"))
                .await?;
            client.shutdown().await.ok();
        }
        Some(("s3_500_after_apply", _)) => {
            forward(&req, upstream).await?;
            client
                .write_all(&error_response(
                    "500 Internal Server Error",
                    "InternalError",
                ))
                .await?;
            client.shutdown().await.ok();
        }
        Some(("s3_reset_after_apply", _)) => {
            forward(&req, upstream).await?;
            reset(client);
        }
        Some(("s3_partial_upload", _)) => {
            let mut up = TcpStream::connect(("127.0.0.1", upstream)).await?;
            up.write_all(&req.head).await?;
            up.write_all(&req.body[..req.body.len() / 2]).await?;
            up.flush().await?;
            reset(up);
            reset(client);
        }
        Some(("s3_stall_reset", d)) => {
            tokio::time::sleep(d).await;
            reset(client);
        }
        Some((_, d)) => {
            tokio::time::sleep(d).await;
            let resp = forward(&req, upstream).await?;
            client.write_all(&close_response(&resp)).await?;
            client.shutdown().await.ok();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_recognised_complete_only_at_the_end() {
        assert!(!chunked_complete(b"5\r\nhello\r\n").unwrap());
        assert!(!chunked_complete(b"5\r\nhello\r\n0\r\n").unwrap());
        assert!(chunked_complete(b"5\r\nhello\r\n0\r\n\r\n").unwrap());
        assert!(chunked_complete(b"5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n").unwrap());
    }

    #[test]
    fn connection_header_is_replaced() {
        let h = rewrite_connection_close(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        );
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
    }
}
