//! Helpers of the security tests (`tests/tests/{kafka_sasl,secrets}.rs`): the broker's SASL
//! listeners from the environment, job configurations that authenticate, and running the
//! binaries with every byte of their output captured.

use crate::traffic::create_topic;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use recon_pipeline::reconcile::Expected;
use recon_pipeline::{demo, generate};

use crate::pipeline::wait_with_deadline;
use crate::{ENV_REQUIRE_SERVICES, Services, services_or_skip};

/// The broker's authenticated listeners, from `infra/local/env`.
pub struct Sasl {
    /// `RECON_KAFKA_SASL_BOOTSTRAP` (SASL_PLAINTEXT).
    pub plaintext: String,
    /// `RECON_KAFKA_SASL_SSL_BOOTSTRAP` (SASL_SSL).
    pub ssl: String,
    /// `RECON_KAFKA_SASL_MECHANISM`.
    pub mechanism: String,
    /// `RECON_KAFKA_SASL_USER`.
    pub user: String,
    /// `RECON_KAFKA_SASL_PASSWORD`.
    pub password: String,
    /// `RECON_KAFKA_SSL_CA_LOCATION`: the CA certificate (PEM) of the SASL_SSL listener.
    pub ca: String,
}

/// Skips loudly (or fails, with `RECON_REQUIRE_SERVICES=1`): the services are up but their SASL
/// side is not (an environment printed before the SASL listeners existed, or an older broker).
fn skip_or_fail(why: &str) -> Option<(Services, Sasl)> {
    if std::env::var(ENV_REQUIRE_SERVICES).as_deref() == Ok("1") {
        panic!("{why}");
    }
    eprintln!("\n*** SKIPPED {why}. It did NOT run. ***");
    None
}

/// The services plus the SASL listeners, or `None` (with a loud SKIPPED line) when they are not
/// there; with `RECON_REQUIRE_SERVICES=1` a missing listener fails the test.
pub fn sasl_or_skip(test: &str) -> Option<(Services, Sasl)> {
    let svc = services_or_skip(test)?;
    let vars = [
        "RECON_KAFKA_SASL_BOOTSTRAP",
        "RECON_KAFKA_SASL_SSL_BOOTSTRAP",
        "RECON_KAFKA_SASL_MECHANISM",
        "RECON_KAFKA_SASL_USER",
        "RECON_KAFKA_SASL_PASSWORD",
        "RECON_KAFKA_SSL_CA_LOCATION",
    ];
    let mut values = Vec::new();
    for v in vars {
        match std::env::var(v) {
            Ok(x) if !x.is_empty() => values.push(x),
            _ => {
                return skip_or_fail(&format!(
                    "{test}: {v} is not set; eval \"$(infra/local/env)\" again (it exports RECON_KAFKA_SASL_*)"
                ));
            }
        }
    }
    let [plaintext, ssl, mechanism, user, password, ca] =
        <[String; 6]>::try_from(values).expect("six values");
    let sasl = Sasl {
        plaintext,
        ssl,
        mechanism,
        user,
        password,
        ca,
    };
    for addr in [&sasl.plaintext, &sasl.ssl] {
        let sock = addr.parse().expect("host:port");
        if std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).is_err() {
            return skip_or_fail(&format!(
                "{test}: nothing listens on {addr}: the broker was started before infra/local/up added the \
                 SASL listeners; restart it (infra/local/down && infra/local/up)"
            ));
        }
    }
    Some((svc, sasl))
}

/// `&[String]` as `Vec<&str>`, for argument lists.
pub fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Publishes a small seeded traffic over PLAINTEXT (the job is what must authenticate).
pub fn publish(s: &Services, topic: &str, trips: u64) -> Expected {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: generate::GenerateArgs,
    }
    create_topic(&s.kafka_bootstrap, topic, 2);
    let args = Wrap::parse_from([
        "generate",
        "--topic",
        topic,
        "--trips",
        &trips.to_string(),
        "--partitions",
        "2",
        "--poison-rate",
        "0.01",
    ])
    .args;
    let (traffic, _, _) = args.resolve().expect("generator args");
    let records: Vec<generate::Record> = generate::plan(&traffic).collect();
    let mut expected = Expected::default();
    demo::publish(&s.kafka_bootstrap, topic, &records, &mut expected).expect("publish");
    expected
}

/// `postgres://user:password@rest` -> (`postgres://user@rest`, `password`).
pub fn split_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("URL");
    let (creds, host) = rest
        .rsplit_once('@')
        .expect("credentials in the catalog URL");
    let (user, pw) = creds.split_once(':').expect("user:password");
    (format!("{scheme}://{user}@{host}"), pw.to_string())
}

/// A job on the real services, as [`job_toml`] writes it.
pub struct JobSpec<'a> {
    /// Job id, namespace, prefixes; the topic is `<name>.events`.
    pub name: &'a str,
    /// Bootstrap of the SASL listener, and its `security.protocol`.
    pub brokers: &'a str,
    /// `SASL_PLAINTEXT` or `SASL_SSL`.
    pub protocol: &'a str,
    /// A `[source]` line with the SASL password (or empty).
    pub source_secret: &'a str,
    /// `catalog.uri`.
    pub catalog_uri: &'a str,
    /// A `[catalog]` line with the database password (or empty).
    pub catalog_password: &'a str,
}

/// The configuration of `job`: SASL source, PostgreSQL catalog, S3 warehouse and checkpoints with
/// credentials from the AWS environment only.
pub fn job_toml(s: &Services, sasl: &Sasl, job: &JobSpec<'_>) -> String {
    let JobSpec {
        name,
        brokers,
        protocol,
        source_secret,
        catalog_uri,
        catalog_password,
    } = job;
    let s3 = &s.s3;
    let ca = if *protocol == "SASL_SSL" {
        format!("\"ssl.ca.location\" = \"{}\"\n", sasl.ca)
    } else {
        String::new()
    };
    format!(
        r#"job_id = "{name}"

[source]
brokers = "{brokers}"
topic = "{name}.events"
{source_secret}

[source.properties]
"security.protocol" = "{protocol}"
"sasl.mechanism" = "{mech}"
"sasl.username" = "{user}"
{ca}
[catalog]
uri = "{catalog_uri}"
{catalog_password}
warehouse = "s3://{wh}/{name}"
namespace = "{name}"

[catalog.properties]
"s3.endpoint" = "{endpoint}"
"s3.region" = "{region}"
"s3.path-style-access" = "true"
"s3.disable-ec2-metadata" = "true"

[checkpoint]
store = "s3://{ck}/{name}"
interval_ms = 300

[checkpoint.store_options]
aws_endpoint = "{endpoint}"
aws_allow_http = "true"
aws_region = "{region}"
aws_virtual_hosted_style_request = "false"
"#,
        mech = sasl.mechanism,
        user = sasl.user,
        wh = s3.warehouse_bucket,
        ck = s3.checkpoint_bucket,
        endpoint = s3.endpoint,
        region = s3.region,
    )
}

/// The `batch-verify` binary of this build (built if missing), beside `recon-pipeline`;
/// `RECON_BATCH_VERIFY_BIN` names another build.
pub fn batch_verify_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("RECON_BATCH_VERIFY_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(pipeline) = std::env::var_os(crate::pipeline::ENV_PIPELINE_BIN) {
        let bin = PathBuf::from(pipeline).with_file_name("batch-verify");
        if bin.exists() {
            return bin;
        }
    }
    crate::pipeline::workspace_binary("batch-verify")
}

/// Runs `bin args` with `env` (stdout and stderr to one log file), bounded by `deadline`.
pub fn run(
    logs: &Path,
    label: &str,
    bin: &Path,
    args: &[&str],
    env: &[(&str, String)],
    deadline: Duration,
) -> (Option<i32>, String) {
    let log = logs.join(format!("{}.log", label.replace([' ', '/'], "_")));
    let out = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("log file")))
        .stderr(Stdio::from(out));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn");
    let (status, text) = wait_with_deadline(child, &log, deadline);
    (status.code(), text)
}

/// `toml` with `lines` added right under the `[section]` header (which must be there).
pub fn add_to_section(toml: &str, section: &str, lines: &[String]) -> String {
    let header = format!("[{section}]\n");
    let at = toml
        .find(&header)
        .unwrap_or_else(|| panic!("no {header:?} in the job's TOML"))
        + header.len();
    format!("{}{}\n{}", &toml[..at], lines.join("\n"), &toml[at..])
}

/// The forms a planted secret could be printed in: as is, percent-encoded (`/`, `+`, `@`, `:`,
/// space) and base64 (computed here, independently of the redactor under test).
pub fn printed_forms(secret: &str) -> Vec<String> {
    let mut pct = String::new();
    for c in secret.chars() {
        match c {
            '/' | '+' | '@' | ':' | ' ' | '=' | '&' | '%' => {
                pct.push_str(&format!("%{:02X}", c as u32));
            }
            c => pct.push(c),
        }
    }
    let mut forms = vec![secret.to_string(), base64(secret.as_bytes())];
    if pct != secret {
        forms.push(pct);
    }
    forms
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every line of `outputs` (label, text) holding a form ([`printed_forms`]) of a `planted` value.
pub fn leaks(outputs: &[(String, String)], planted: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (label, out) in outputs {
        for p in planted {
            for form in printed_forms(p) {
                for line in out.lines().filter(|l| l.contains(&form)) {
                    let shown: String = line.chars().take(400).collect();
                    found.push(format!("{label}: {form:?} (of {p:?}) in: {shown}"));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_and_percent_forms() {
        assert_eq!(super::base64(b"hunter2"), "aHVudGVyMg==");
        assert_eq!(super::base64(b"ab"), "YWI=");
        assert_eq!(super::base64(b"abc"), "YWJj");
        assert_eq!(
            super::printed_forms("a/b+c"),
            ["a/b+c", "YS9iK2M=", "a%2Fb%2Bc"]
        );
    }
}
