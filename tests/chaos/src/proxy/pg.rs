//! A TCP proxy in front of PostgreSQL (the Iceberg SQL catalog) that understands just enough of
//! the wire protocol to find the catalog's commit.
//!
//! iceberg-catalog-sql commits a table as `BEGIN; UPDATE iceberg_tables SET metadata_location ...;
//! COMMIT` (extended protocol for the UPDATE, cached as a named statement; simple query for BEGIN
//! and COMMIT). The proxy tracks, per connection, which prepared statements are that UPDATE and
//! whether the open transaction ran one; when the client then sends `COMMIT` and a commit action
//! is armed, it fires once:
//!
//! - [`CommitAction::LoseReply`]: COMMIT goes to the server, the server's answer is read (the commit
//!   is durable) and thrown away, both connections are reset: *the commit landed, the reply was lost*;
//! - [`CommitAction::KillJob`]: as above, but the job process is SIGKILLed before the reset: *the
//!   commit lands and the job dies before it hears the answer*;
//! - [`CommitAction::DropCommit`]: COMMIT never reaches the server; both connections are reset (the
//!   transaction aborts): *the catalog went away mid-commit*;
//! - [`CommitAction::Hook`]: COMMIT is held while a callback runs (e.g. PostgreSQL is restarted),
//!   then forwarded if the connection still works.
//!
//! Besides, [`PgProxy::refuse`] makes the catalog refuse connections (accepted, then reset) and
//! cuts every live one, until [`PgProxy::accept`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::s3::reset;

/// What to do at the next catalog commit.
pub enum CommitAction {
    /// Forward COMMIT, swallow the answer, reset.
    LoseReply,
    /// Forward COMMIT, wait for the answer, SIGKILL this pid, reset.
    KillJob(i32),
    /// Never forward COMMIT; reset.
    DropCommit,
    /// Hold COMMIT, run the callback (on a blocking thread), then carry on.
    Hook(Box<dyn FnOnce() + Send>),
}

/// Shared state of the proxy.
pub struct PgControl {
    refusing: AtomicBool,
    /// Bumped to cut every live connection.
    cut: watch::Sender<u64>,
    armed: Mutex<Option<CommitAction>>,
    /// Catalog commits (COMMIT of a transaction that ran the table UPDATE) seen.
    pub commits_seen: AtomicU64,
    /// Commit actions fired.
    pub fired: AtomicU64,
    /// Connections refused.
    pub refused: AtomicU64,
}

/// A running proxy.
pub struct PgProxy {
    /// Port the job's catalog URL should use.
    pub port: u16,
    /// Control.
    pub control: Arc<PgControl>,
}

impl PgProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> anyhow::Result<PgProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(0u64);
        let control = Arc::new(PgControl {
            refusing: AtomicBool::new(false),
            cut,
            armed: Mutex::new(None),
            commits_seen: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let c = control.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if c.refusing.load(Ordering::SeqCst) {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    reset(client);
                    continue;
                }
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = connection(client, upstream, c).await;
                });
            }
        });
        Ok(PgProxy { port, control })
    }

    /// Refuse new connections and cut the live ones.
    pub fn refuse(&self) {
        self.control.refusing.store(true, Ordering::SeqCst);
        self.cut_all();
    }

    /// Accept connections again.
    pub fn accept(&self) {
        self.control.refusing.store(false, Ordering::SeqCst);
    }

    /// Cut every live connection (as a server restart does).
    pub fn cut_all(&self) {
        self.control.cut.send_modify(|v| *v += 1);
    }

    /// Arms `action` for the next catalog commit (replacing any armed one).
    pub fn arm(&self, action: CommitAction) {
        *self.control.armed.lock().expect("lock") = Some(action);
    }

    /// Disarms; true if an action was still armed (it never fired).
    pub fn disarm(&self) -> bool {
        self.control.armed.lock().expect("lock").take().is_some()
    }
}

/// Per-connection protocol tracking (client -> server direction).
#[derive(Default)]
struct Tracker {
    started: bool,
    update_statements: HashSet<Vec<u8>>,
    pending_update_parse: bool,
    in_commit_tx: bool,
}

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const PROTOCOL_3: u32 = 196_608;

fn is_table_update(sql: &[u8]) -> bool {
    let s = String::from_utf8_lossy(sql).to_ascii_lowercase();
    s.trim_start().starts_with("update")
        && s.contains("iceberg_tables")
        && s.contains("metadata_location")
}

/// Reads one whole message from the client: untyped (startup phase) or typed.
async fn read_message(r: &mut OwnedReadHalf, typed: bool) -> std::io::Result<Option<Vec<u8>>> {
    let mut msg = Vec::new();
    if typed {
        let mut t = [0u8; 1];
        if r.read(&mut t).await? == 0 {
            return Ok(None);
        }
        msg.push(t[0]);
    }
    let mut len = [0u8; 4];
    if r.read_exact(&mut len).await.is_err() {
        return Ok(None);
    }
    msg.extend_from_slice(&len);
    let n = u32::from_be_bytes(len) as usize;
    if !(4..=512 * 1024 * 1024).contains(&n) {
        return Err(std::io::Error::other("bad PostgreSQL message length"));
    }
    let start = msg.len();
    msg.resize(start + n - 4, 0);
    r.read_exact(&mut msg[start..]).await?;
    Ok(Some(msg))
}

fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|c| *c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// Classifies a typed client message; true when it is the COMMIT of a catalog commit.
fn observe(t: &mut Tracker, msg: &[u8]) -> bool {
    let body = &msg[5..];
    match msg[0] {
        b'P' => {
            let (name, rest) = cstr(body);
            let (sql, _) = cstr(rest);
            if is_table_update(sql) {
                t.update_statements.insert(name.to_vec());
                t.pending_update_parse = name.is_empty();
            } else if name.is_empty() {
                t.pending_update_parse = false;
            }
            false
        }
        b'B' => {
            let (_portal, rest) = cstr(body);
            let (stmt, _) = cstr(rest);
            if (stmt.is_empty() && t.pending_update_parse)
                || (!stmt.is_empty() && t.update_statements.contains(stmt))
            {
                t.in_commit_tx = true;
            }
            false
        }
        b'Q' => {
            let (sql, _) = cstr(body);
            let s = String::from_utf8_lossy(sql).trim().to_ascii_uppercase();
            if is_table_update(sql) {
                t.in_commit_tx = true;
                false
            } else if s.starts_with("COMMIT") || s.starts_with("END") {
                std::mem::take(&mut t.in_commit_tx)
            } else {
                if s.starts_with("BEGIN") || s.starts_with("ROLLBACK") || s.starts_with("START") {
                    t.in_commit_tx = false;
                }
                false
            }
        }
        _ => false,
    }
}

/// Reads server messages until a ReadyForQuery ('Z'), returning everything read.
async fn until_ready(up: &mut OwnedReadHalf) -> std::io::Result<()> {
    loop {
        let Some(m) = read_message(up, true).await? else {
            return Err(std::io::Error::other("server closed"));
        };
        if m[0] == b'Z' {
            return Ok(());
        }
    }
}

async fn connection(
    client: TcpStream,
    upstream: u16,
    control: Arc<PgControl>,
) -> anyhow::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream)).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut cut = control.cut.subscribe();
    cut.borrow_and_update();
    // Server -> client: raw copy, paused (by dropping the sender) when a commit action takes over.
    let (pause_tx, mut pause_rx) = watch::channel(false);
    let (srv_back_tx, srv_back_rx) = tokio::sync::oneshot::channel::<OwnedReadHalf>();
    let s2c = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                biased;
                _ = pause_rx.changed() => {
                    let _ = srv_back_tx.send(sr);
                    return cw;
                }
                n = sr.read(&mut buf) => {
                    match n {
                        Ok(0) | Err(_) => return cw,
                        Ok(n) => {
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return cw;
                            }
                        }
                    }
                }
            }
        }
    });
    let mut tracker = Tracker::default();
    let result: anyhow::Result<()> = async {
        loop {
            let msg = tokio::select! {
                _ = cut.changed() => anyhow::bail!("cut"),
                m = read_message(&mut cr, tracker.started) => m?,
            };
            let Some(msg) = msg else { return Ok(()) };
            if !tracker.started {
                let code = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]);
                if code == PROTOCOL_3 {
                    tracker.started = true;
                } else if code != SSL_REQUEST && code != GSSENC_REQUEST {
                    // Cancel request or unknown: forward and stop tracking.
                    sw.write_all(&msg).await?;
                    tokio::io::copy(&mut cr, &mut sw).await?;
                    return Ok(());
                }
                sw.write_all(&msg).await?;
                continue;
            }
            let is_commit = observe(&mut tracker, &msg);
            if is_commit {
                control.commits_seen.fetch_add(1, Ordering::Relaxed);
                let action = control.armed.lock().expect("lock").take();
                if let Some(action) = action {
                    control.fired.fetch_add(1, Ordering::Relaxed);
                    return fire(action, msg, &mut sw, &pause_tx, srv_back_rx).await;
                }
            }
            sw.write_all(&msg).await?;
        }
    }
    .await;
    // Any exit: close both sides (a cut resets them like a dying server would).
    drop(pause_tx);
    if let Ok(cw) = s2c.await
        && let Ok(c) = cr.reunite(cw)
    {
        reset(c);
    }
    let _ = sw.shutdown().await;
    result
}

async fn fire(
    action: CommitAction,
    commit: Vec<u8>,
    sw: &mut OwnedWriteHalf,
    pause_tx: &watch::Sender<bool>,
    srv_back: tokio::sync::oneshot::Receiver<OwnedReadHalf>,
) -> anyhow::Result<()> {
    match action {
        CommitAction::DropCommit => anyhow::bail!("commit dropped"),
        CommitAction::Hook(f) => {
            tokio::task::spawn_blocking(f).await?;
            sw.write_all(&commit).await?;
            // The connection may well be dead now; either way the client finds out.
            anyhow::bail!("hook ran; connection closed")
        }
        CommitAction::LoseReply | CommitAction::KillJob(_) => {
            let _ = pause_tx.send(true);
            let mut sr = srv_back.await?;
            sw.write_all(&commit).await?;
            until_ready(&mut sr).await?;
            if let CommitAction::KillJob(pid) = action {
                crate::services::signal(pid, libc::SIGKILL)?;
            }
            anyhow::bail!("reply lost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(t: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![t];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn finds_the_commit_of_a_table_update_only() {
        let mut t = Tracker::default();
        let update = b"sqlx_s_3\0UPDATE iceberg_tables\n SET metadata_location = $1 WHERE x\0\0\0";
        assert!(!observe(&mut t, &typed(b'Q', b"BEGIN\0")));
        assert!(!observe(&mut t, &typed(b'P', update)));
        assert!(!observe(&mut t, &typed(b'B', b"\0sqlx_s_3\0\0\0")));
        assert!(observe(&mut t, &typed(b'Q', b"COMMIT\0")));
        // A later transaction that only reads is not a commit.
        assert!(!observe(&mut t, &typed(b'Q', b"BEGIN\0")));
        assert!(!observe(&mut t, &typed(b'B', b"\0sqlx_s_1\0\0\0")));
        assert!(!observe(&mut t, &typed(b'Q', b"COMMIT\0")));
        // The cached statement again, by name only.
        assert!(!observe(&mut t, &typed(b'Q', b"BEGIN\0")));
        assert!(!observe(&mut t, &typed(b'B', b"\0sqlx_s_3\0\0\0")));
        assert!(observe(&mut t, &typed(b'Q', b"COMMIT\0")));
    }
}
