//! Log output of the binaries (`recon-pipeline`, `batch-verify`): the filter, the format, and
//! the two guards that keep credentials out of it whatever `RUST_LOG` asks for.
//!
//! 1. **Capped targets** ([`CAPPED_TARGETS`]): libraries known to print credentials in their
//!    debug or trace lines are held at INFO at most, regardless of `RUST_LOG`. reqsign (the
//!    request signer of opendal, hence of iceberg's S3 `FileIO`) logs
//!    `Trying credential provider: StaticCredentialProvider { access_key_id: "...",
//!    secret_access_key: "..." }` at DEBUG for every request when the S3 keys are given in
//!    `[catalog.properties]`.
//! 2. **Redaction by value** ([`crate::redactor`]): every line, of every target and level, in
//!    both formats, has every secret the process knows replaced before it reaches stderr; this
//!    also covers a library that starts printing credentials in its next version.
//!
//! The secrets known at start are collected here ([`startup_secrets`]: secret-looking
//! environment variables, URL passwords in the environment and on the command line); the
//! configuration's own secrets are added when it is loaded (`Config::load`).

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::redactor::{self, RedactingStderr};
use crate::secrets;

/// Targets (and their submodules) never logged below INFO, whatever `RUST_LOG` says: they print
/// credentials (or their providers' `Debug`) at DEBUG/TRACE.
pub const CAPPED_TARGETS: [&str; 8] = [
    "reqsign",
    "reqsign_core",
    "reqsign_aws_v4",
    "reqsign_aws_core",
    "reqsign_file_read_tokio",
    "aws_config",
    "aws_credential_types",
    "aws_sigv4",
];

/// Installs the global subscriber: `RUST_LOG` (else `default_filter`), `format` `json` or human
/// text (colours only on a terminal), [`CAPPED_TARGETS`] at INFO at most, and every line through
/// the redacting writer, after remembering [`startup_secrets`].
pub fn init(format: &str, default_filter: &str) {
    let args: Vec<String> = std::env::args().collect();
    redactor::remember(startup_secrets(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        args.iter().map(String::as_str),
    ));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let caps = CAPPED_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, c| {
            t.with_target(*c, LevelFilter::INFO)
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(RedactingStderr);
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    // `try_init`: a second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt.with_filter(caps))
        .try_init();
}

/// The secret values visible at start: values of environment variables whose name looks secret
/// (`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `RECON__SOURCE__SASL_PASSWORD`,
/// `PGPASSWORD`...), and the passwords of URLs in the environment (`BATCH_VERIFY_TRUTH_URL`,
/// `RECON__CATALOG__URI`) and among the command-line arguments (`--truth-url`).
pub fn startup_secrets<'a>(
    env: impl IntoIterator<Item = (String, String)>,
    args: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut values = Vec::new();
    for (k, v) in env {
        if secrets::is_secret_name(&k) {
            out.push(v.trim().to_string());
            out.push(v);
        } else if v.contains("://") {
            values.push(v);
        }
    }
    out.extend(redactor::url_passwords(values.iter().map(String::as_str)));
    out.extend(redactor::url_passwords(args));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_of_the_environment_and_the_command_line() {
        let env = [
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-1"),
            ("AWS_ACCESS_KEY_ID", "key-id-not-secret"),
            ("RECON__SOURCE__SASL_PASSWORD", "sasl-pw-2"),
            ("BATCH_VERIFY_TRUTH_URL", "postgres://u:truth-pw-3@h/db"),
            ("HOME", "/home/x"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let got = startup_secrets(env, ["--truth-url", "postgres://u:arg-pw-4@h/db"]);
        for want in ["aws-secret-1", "sasl-pw-2", "truth-pw-3", "arg-pw-4"] {
            assert!(got.iter().any(|g| g == want), "{want} not in {got:?}");
        }
        assert!(
            !got.iter()
                .any(|g| g.contains("key-id") || g.contains("home")),
            "{got:?}"
        );
    }

    #[test]
    fn capped_targets_are_the_signers_of_s3_requests() {
        // Every capped target is a crate of the dependency graph or the AWS SDK's signer family;
        // the cap holds for submodules (`reqsign_core::api`).
        let caps = CAPPED_TARGETS
            .iter()
            .fold(Targets::new().with_default(LevelFilter::TRACE), |t, c| {
                t.with_target(*c, LevelFilter::INFO)
            });
        assert!(!caps.would_enable("reqsign_core::api", &tracing::Level::DEBUG));
        assert!(caps.would_enable("reqsign_core::api", &tracing::Level::INFO));
        assert!(caps.would_enable("recon_pipeline::job", &tracing::Level::TRACE));
    }
}
