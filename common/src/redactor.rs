//! The last line of defence for secrets in log output: every secret value the process knows is
//! replaced by [`REDACTED`](crate::secrets::REDACTED) in every log line, whatever its level,
//! target or format, before the bytes reach stderr.
//!
//! Why a redacting writer when the configuration types already hide their secrets: the process
//! does not own every log line. Dependencies log their own `Debug` views at debug and trace level
//! (reqsign's `StaticCredentialProvider { secret_access_key: "..." }` printed the S3 secret key of
//! `[catalog.properties]` 168 times in one `RUST_LOG=trace` run), and their next version may add
//! another. Filtering the known targets (see [`crate::logging`]) covers what is known; this
//! covers the rest, by value rather than by target.
//!
//! How: the process collects the values ([`remember`]: the configuration's secrets when it is
//! loaded, secret-looking environment variables and URL passwords on the command line at start)
//! and each log line is searched for every value and its encodings (`Debug`/JSON escaping,
//! percent-encoding, base64) with one Aho-Corasick automaton. A value shorter than
//! [`WHOLE_WORD_BYTES_MAX`] + 1 bytes is replaced only where it stands as a whole word (replacing
//! a 5-letter password inside `recon_pipeline` would garble every line and reveal nothing
//! useful); values under [`SECRET_BYTES_MIN`] bytes are not searched for at all.
//!
//! This module depends only on std, `aho-corasick`, `base64`, `url` and `tracing-subscriber`'s
//! `MakeWriter`, so its cost can be measured on its own.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// What a hidden value prints as (the same marker as `secrets::REDACTED`).
const MARK: &[u8] = b"***";

/// Values shorter than this are not searched for: replacing `1` or `on` everywhere would destroy
/// the logs, and no credential is that short.
pub const SECRET_BYTES_MIN: usize = 4;

/// Values up to this length are replaced only as whole words (not inside a longer word).
pub const WHOLE_WORD_BYTES_MAX: usize = 7;

/// Every known secret, compiled.
pub struct Redactor {
    automaton: AhoCorasick,
    /// Per pattern: replace only where it is a whole word.
    whole_word: Vec<bool>,
}

/// The forms a secret can take in a log line: as is, escaped by `Debug` and by JSON (and both,
/// for a `Debug` view inside a JSON log line), percent-encoded as in a URL's userinfo or query,
/// and base64 (HTTP basic authentication carries `user:password`; the password alone is cheap).
pub fn variants(secret: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let debug = format!("{secret:?}");
    let debug = debug[1..debug.len() - 1].to_string();
    let json = |s: &str| {
        let q = serde_json_escape(s);
        q[1..q.len() - 1].to_string()
    };
    out.insert(json(&debug));
    out.insert(json(secret));
    out.insert(debug);
    out.insert(secret.to_string());
    if let Ok(mut u) = url::Url::parse("http://u@h")
        && u.set_password(Some(secret)).is_ok()
        && let Some(p) = u.password()
    {
        out.insert(p.to_string());
    }
    out.insert(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
    if secret.len() > WHOLE_WORD_BYTES_MAX {
        // Not for short values: their base64 is short enough to occur by chance.
        use base64::Engine as _;
        out.insert(base64::engine::general_purpose::STANDARD.encode(secret));
    }
    out.retain(|v| v.len() >= SECRET_BYTES_MIN);
    out
}

/// A JSON string literal of `s` (with its quotes), as serde_json writes it.
fn serde_json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Bytes that continue a word (identifiers, bucket and host names: `recon_catalog`,
/// `recon-warehouse`).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl Redactor {
    /// A redactor for `secrets` (each with its [`variants`]); `None` when none is long enough to
    /// search for.
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Option<Redactor> {
        let patterns: BTreeSet<String> = secrets
            .into_iter()
            .filter(|s| s.as_ref().len() >= SECRET_BYTES_MIN)
            .flat_map(|s| variants(s.as_ref()))
            .collect();
        if patterns.is_empty() {
            return None;
        }
        let patterns: Vec<String> = patterns.into_iter().collect();
        let whole_word = patterns
            .iter()
            .map(|p| p.len() <= WHOLE_WORD_BYTES_MAX)
            .collect();
        // Leftmost-longest: of two secrets sharing a start, the longer one is hidden whole.
        // A DFA: a few hundred patterns at most, and the search runs on every log line.
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .prefilter(false)
            .build(&patterns)
            .ok()?;
        Some(Redactor {
            automaton,
            whole_word,
        })
    }

    /// `bytes` with every secret replaced; borrowed when there was nothing to replace.
    pub fn redact<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        for m in self.automaton.find_iter(bytes) {
            if self.whole_word[m.pattern().as_usize()] {
                let before = m.start().checked_sub(1).map(|i| bytes[i]);
                let after = bytes.get(m.end()).copied();
                if before.is_some_and(is_word_byte) || after.is_some_and(is_word_byte) {
                    continue;
                }
            }
            let o = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
            o.extend_from_slice(&bytes[copied..m.start()]);
            o.extend_from_slice(MARK);
            copied = m.end();
        }
        match out {
            None => Cow::Borrowed(bytes),
            Some(mut o) => {
                o.extend_from_slice(&bytes[copied..]);
                Cow::Owned(o)
            }
        }
    }
}

/// The process's secrets and their compiled redactor.
struct Registry {
    values: BTreeSet<String>,
    redactor: Option<Arc<Redactor>>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry {
    values: BTreeSet::new(),
    redactor: None,
});

/// Adds secret values to hide from every log line written from now on (empty and too-short
/// values are ignored). Call it as soon as a value is known, before any library sees it.
pub fn remember<S: Into<String>>(values: impl IntoIterator<Item = S>) {
    let mut reg = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    let before = reg.values.len();
    reg.values.extend(
        values
            .into_iter()
            .map(Into::into)
            .filter(|v: &String| v.len() >= SECRET_BYTES_MIN),
    );
    if reg.values.len() != before {
        let r = Redactor::new(reg.values.iter());
        reg.redactor = r.map(Arc::new);
    }
}

fn current() -> Option<Arc<Redactor>> {
    REGISTRY
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .redactor
        .clone()
}

/// `text` with every remembered secret hidden (for messages printed outside the log, e.g. the
/// final error line).
pub fn redact_str(text: &str) -> String {
    match current() {
        None => text.to_string(),
        Some(r) => String::from_utf8_lossy(&r.redact(text.as_bytes())).into_owned(),
    }
}

/// The passwords of URLs among `args` (`postgres://user:pw@host`, in either spelling: as written
/// and percent-decoded): a database URL given on the command line.
pub fn url_passwords<'a>(args: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        // `--truth-url=postgres://...` as well as a separate argument.
        let candidate = a.find("://").map_or(a, |i| {
            let start = a[..i].rfind('=').map_or(0, |e| e + 1);
            &a[start..]
        });
        if let Ok(u) = url::Url::parse(candidate)
            && let Some(p) = u.password()
        {
            out.push(p.to_string());
            // Percent-decoded (a bare `key` parses to `(key, "")`).
            if let Some((decoded, _)) = url::form_urlencoded::parse(p.as_bytes()).next()
                && decoded != p
            {
                out.push(decoded.into_owned());
            }
        }
    }
    out
}

/// A `MakeWriter` for `tracing-subscriber`'s fmt layer: stderr, with every remembered secret
/// replaced. The fmt layer formats an event whole and writes it once, so a line is searched as
/// one piece and reaches stderr in one write (no interleaving of concurrent lines, no added
/// buffering: a line is out when its event returns).
#[derive(Clone, Copy, Debug, Default)]
pub struct RedactingStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            pending: Vec::new(),
            redactor: current(),
        }
    }
}

/// One event's writer: searches whole lines. Bytes after the last newline are held until the
/// next newline or the writer is dropped (the fmt layer drops it after each event).
pub struct LineWriter {
    pending: Vec<u8>,
    redactor: Option<Arc<Redactor>>,
}

impl LineWriter {
    fn emit(&self, bytes: &[u8]) -> std::io::Result<()> {
        let out = match &self.redactor {
            Some(r) => r.redact(bytes),
            None => Cow::Borrowed(bytes),
        };
        std::io::stderr().lock().write_all(&out)
    }
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match buf.iter().rposition(|b| *b == b'\n') {
            // The usual case: a whole line, nothing held. No copy.
            Some(last) if self.pending.is_empty() && last + 1 == buf.len() => self.emit(buf)?,
            Some(last) => {
                self.pending.extend_from_slice(&buf[..=last]);
                let lines = std::mem::take(&mut self.pending);
                self.emit(&lines)?;
                self.pending.extend_from_slice(&buf[last + 1..]);
            }
            None => self.pending.extend_from_slice(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest)?;
        }
        std::io::stderr().flush()
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(secrets: &[&str], line: &str, expected: &str) {
        let r = Redactor::new(secrets).expect("searchable secrets");
        assert_eq!(
            String::from_utf8(r.redact(line.as_bytes()).into_owned()).unwrap(),
            expected
        );
    }

    #[test]
    fn every_form_is_hidden() {
        check(
            &["s3cr3t-KEY/x+y"],
            r#"StaticCredentialProvider { secret_access_key: "s3cr3t-KEY/x+y" }"#,
            r#"StaticCredentialProvider { secret_access_key: "***" }"#,
        );
        // Debug escaping, JSON escaping of that, percent-encoding, base64.
        check(
            &["pa\"ss\\word"],
            r#"{"m":"x: \"pa\\\"ss\\\\word\""}"#,
            r#"{"m":"x: \"***\""}"#,
        );
        check(
            &["p@ss:w/rd"],
            "postgres://u:p%40ss%3Aw%2Frd@h",
            "postgres://u:***@h",
        );
        check(&["p@ss w/rd"], "q=p%40ss+w%2Frd", "q=***");
        check(
            &["hunter2hunter2"],
            "Basic aHVudGVyMmh1bnRlcjI=",
            "Basic ***",
        );
        check(&["abcdefgh"], "xabcdefghy abcdefgh", "x***y ***");
    }

    #[test]
    fn short_secrets_only_as_whole_words_and_tiny_ones_never() {
        check(
            &["recon"],
            "recon_pipeline::job: postgres://recon:recon@h/recon_catalog s3://recon-wh",
            "recon_pipeline::job: postgres://***:***@h/recon_catalog s3://recon-wh",
        );
        assert!(Redactor::new(["on", "1"]).is_none());
        check(&["abc", "longer-secret"], "abc longer-secret", "abc ***");
    }

    #[test]
    fn the_longest_secret_wins() {
        check(
            &["secret-one", "secret-one-two"],
            "[secret-one-two]",
            "[***]",
        );
    }

    #[test]
    fn passwords_of_urls_on_a_command_line() {
        let p = url_passwords([
            "--truth-url=postgres://u:p%40w-123@h/db",
            "postgres://v:second-pw@h/db",
            "--date",
            "s3://bucket/x",
        ]);
        assert_eq!(p, ["p%40w-123", "p@w-123", "second-pw"]);
    }

    #[test]
    fn lines_split_across_writes_are_searched_whole() {
        // A writer holds a partial line until its newline; the redaction itself is what
        // `Redactor::redact` does, checked above.
        let mut w = LineWriter {
            pending: Vec::new(),
            redactor: None,
        };
        w.write_all(b"part one ").unwrap();
        assert_eq!(w.pending, b"part one ");
        w.write_all(b"part two\nnext").unwrap();
        assert_eq!(w.pending, b"next");
        w.pending.clear();
    }
}
