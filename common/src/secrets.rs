//! Secrets in the configuration: where they come from, and how they stay out of every output.
//!
//! Two secrets have their own keys, each settable three ways (one at a time):
//! - the Kafka SASL password: `source.sasl_password`, `source.sasl_password_file`
//!   (or the raw librdkafka property `source.properties."sasl.password"`);
//! - the catalog database password: `catalog.password`, `catalog.password_file` (put into the
//!   `postgres://` URL of `catalog.uri`, which then carries only the user).
//!
//! A `*_file` key names a file holding the secret (a mounted Kubernetes/Docker secret, a systemd
//! credential); one trailing newline is ignored. The environment variables of the secret keys
//! (`RECON__SOURCE__SASL_PASSWORD`, `RECON__CATALOG__PASSWORD`, `RECON__CATALOG__URI`) are read
//! **verbatim**: figment would otherwise parse `123` as a number or strip quotes, corrupting the
//! password and printing it in a type error. S3 credentials come from the standard AWS
//! environment / provider chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles, web
//! identity), for the checkpoint store and the warehouse alike.
//!
//! Output rule: no value of a secret ever reaches a log line, an error message or `Debug`. The
//! configuration types print secret-looking properties as [`REDACTED`], URLs go through
//! [`redact_url`], and librdkafka's configuration errors through [`kafka_error_text`] (rdkafka's
//! own message repeats the offending value). `tests/tests/secrets.rs` plants distinctive values
//! and greps every output of the binaries for them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// What a hidden value prints as.
pub const REDACTED: &str = "***";

/// Largest secret file read (a password, a token; never a bundle).
pub const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Configuration keys (dotted) whose `RECON__...` environment variables are taken verbatim.
pub const VERBATIM_ENV_KEYS: [&str; 3] =
    ["source.sasl_password", "catalog.password", "catalog.uri"];

/// The environment variable of a dotted configuration key: `source.sasl_password` ->
/// `RECON__SOURCE__SASL_PASSWORD`.
pub fn env_var_name(key: &str) -> String {
    format!(
        "{}{}",
        crate::config::ENV_PREFIX,
        key.replace('.', "__").to_uppercase()
    )
}

/// Whether a property or option name holds a secret (password, secret key, token, credentials,
/// private key), e.g. `sasl.password`, `s3.secret-access-key`, `aws_session_token`.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "private",
        "jaas",
        "ssl.key.pem",
        "keystore",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// `Debug` view of a properties map: keys as they are, secret values as [`REDACTED`].
pub struct RedactedMap<'a>(pub &'a BTreeMap<String, String>);

impl fmt::Debug for RedactedMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if is_secret_name(k) {
                    REDACTED
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// The one secret of `key` given as a value or as a file, `None` when neither is set. Both set is
/// an error; a file that cannot be read or is empty is an error naming the key and the path.
pub fn value_or_file(key: &str, value: &str, file: &str) -> Result<Option<String>, String> {
    match (value.is_empty(), file.trim().is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Ok(Some(value.to_string())),
        (true, false) => read_secret_file(&format!("{key}_file"), Path::new(file.trim())).map(Some),
        (false, false) => Err(format!(
            "{key} and {key}_file are both set; keep one (the file is the safer place)"
        )),
    }
}

/// Reads a secret file: its content minus one trailing newline. Errors name the key and the
/// path, never the content.
pub fn read_secret_file(key: &str, path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    if meta.len() > SECRET_FILE_BYTES_MAX {
        return Err(format!(
            "{key}: {} is {} bytes, more than a secret ({SECRET_FILE_BYTES_MAX} bytes max); point it at the file holding only the secret",
            path.display(),
            meta.len()
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| format!("{key}: {} is not UTF-8 text", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!(
            "{key}: {} is empty; write the secret into it",
            path.display()
        ));
    }
    Ok(text)
}

/// `url` with `password` as its password (percent-encoded as a URL needs). Refuses a URL that
/// already carries one, so that two sources of the same secret never silently disagree.
pub fn with_url_password(key: &str, url: &str, password: &str) -> Result<String, String> {
    let mut u = url::Url::parse(url)
        .map_err(|e| format!("{key}: {:?} is not a URL ({e})", redact_url(url)))?;
    if u.password().is_some() {
        return Err(format!(
            "{key}: {:?} already holds a password and a separate password is set too; keep one",
            redact_url(url)
        ));
    }
    u.set_password(Some(password))
        .map_err(|()| format!("{key}: {:?} cannot carry a password", redact_url(url)))?;
    Ok(u.to_string())
}

/// Query parameters of a database URL that carry secrets (sqlx reads `password` from the query).
const SECRET_QUERY_KEYS: [&str; 2] = ["password", "sslpassword"];

/// Hides the password of a URL such as `postgres://user:secret@host/db` (also in its query
/// string). A string that does not parse as a URL loses everything between `://` and the last `@`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}{REDACTED}{}", &url[..s + 3], &url[at..]),
            _ => url.to_string(),
        };
    };
    let secret_query = u
        .query_pairs()
        .any(|(k, _)| SECRET_QUERY_KEYS.contains(&k.to_ascii_lowercase().as_str()));
    if u.password().is_none() && !secret_query {
        return url.to_string();
    }
    if u.password().is_some() {
        // Cannot fail: the URL already has credentials.
        let _ = u.set_password(Some(REDACTED));
    }
    if secret_query {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let hidden = SECRET_QUERY_KEYS.contains(&k.to_ascii_lowercase().as_str());
                (
                    k.into_owned(),
                    if hidden {
                        REDACTED.into()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Every secret value of a resolved configuration, for the log redactor
/// ([`crate::redactor::remember`]): secret-looking properties of `[source.properties]`
/// (including the SASL password, wherever it came from), `[catalog.properties]`,
/// `[checkpoint.store_options]` and `[alerts.properties]`, and the passwords of the catalog
/// and current-balance database URLs (as written and percent-decoded).
pub fn values_of(cfg: &crate::config::Config) -> Vec<String> {
    let maps = [
        &cfg.source.properties,
        &cfg.catalog.properties,
        &cfg.checkpoint_store_options,
        &cfg.alerts.properties,
    ];
    let mut out: Vec<String> = maps
        .iter()
        .flat_map(|m| m.iter())
        .filter(|(k, _)| is_secret_name(k))
        .map(|(_, v)| v.clone())
        .collect();
    let urls = [
        Some(cfg.catalog.uri.as_str()),
        cfg.current_balances_url.as_deref(),
    ];
    out.extend(crate::redactor::url_passwords(urls.into_iter().flatten()));
    out
}

/// A librdkafka client error as text, without the property value that rdkafka's own message for
/// a configuration error repeats (a mistyped `sasl.pasword` would otherwise print the password).
pub fn kafka_error_text(e: &rdkafka::error::KafkaError) -> String {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, desc, key, _) => {
            format!("{desc} (property {key:?}; its value is not shown)")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(
            redact_url("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?mode=rwc"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        let r = redact_url("postgres://u@h/db?sslmode=disable&password=s3cr3t");
        assert!(
            !r.contains("s3cr3t") && r.contains("sslmode=disable"),
            "{r}"
        );
        let r = redact_url("postgres://u:p@ss:w0rd@h/db");
        assert!(!r.contains("w0rd"), "{r}");
        let r = redact_url("not a url://u:hidden@x");
        assert!(!r.contains("hidden"), "{r}");
    }

    #[test]
    fn url_password_is_encoded_and_never_doubled() {
        let u = with_url_password("catalog.password", "postgres://u@h:5/db", "p@ss:/w?").unwrap();
        assert_eq!(u, "postgres://u:p%40ss%3A%2Fw%3F@h:5/db");
        let e = with_url_password("catalog.password", "postgres://u:old-pw-7@h/db", "new-pw-8")
            .unwrap_err();
        assert!(e.contains("catalog.password") && !e.contains("pw-"), "{e}");
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        assert_eq!(read_secret_file("k", &p).unwrap(), "hunter2");
        std::fs::write(&p, "hunter2\r\n").unwrap();
        assert_eq!(read_secret_file("k", &p).unwrap(), "hunter2");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_secret_file("k", &p).unwrap_err().contains("empty"));
        let e = read_secret_file("k", &dir.path().join("none")).unwrap_err();
        assert!(e.contains("k:") && e.contains("none"), "{e}");
        let p = p.display().to_string();
        assert_eq!(value_or_file("k", "", ""), Ok(None));
        assert_eq!(value_or_file("k", "v", ""), Ok(Some("v".into())));
        assert!(value_or_file("k", "v", &p).unwrap_err().contains("both"));
    }

    #[test]
    fn maps_hide_secret_values() {
        let m: BTreeMap<String, String> = [
            ("sasl.password", "pw-1"),
            ("s3.secret-access-key", "sk-2"),
            ("sasl.username", "alice"),
            ("ssl.key.password", "kp-3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = format!("{:?}", RedactedMap(&m));
        assert!(s.contains("alice") && s.contains("sasl.password"), "{s}");
        for planted in ["pw-1", "sk-2", "kp-3"] {
            assert!(!s.contains(planted), "{s}");
        }
    }

    #[test]
    fn kafka_config_errors_hide_the_value() {
        let e = rdkafka::ClientConfig::new()
            .set("sasl.pasword", "planted-value")
            .create::<rdkafka::consumer::BaseConsumer>()
            .err()
            .unwrap();
        let t = kafka_error_text(&e);
        assert!(
            t.contains("sasl.pasword") && !t.contains("planted-value"),
            "{t}"
        );
        assert!(
            e.to_string().contains("planted-value"),
            "rdkafka now hides it itself"
        );
    }
}
