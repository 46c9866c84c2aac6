//! Kafka over SASL and TLS, and secrets kept out of every output, against the real services.
//!
//! `job_reads_over_sasl_ssl_and_a_wrong_password_stops_it`: the real binary consumes a topic
//! through the broker's SASL_SSL listener (SCRAM-SHA-256, the local CA in `ssl.ca.location`, the
//! password verbatim from `RECON__SOURCE__SASL_PASSWORD`) and commits every event exactly once;
//! with a wrong password it stops within seconds, exit 1, naming the SASL authentication failure.
//!
//! `secrets_never_printed`: distinctive secret values are planted in configuration files,
//! secret files and the environment (SASL passwords, S3 secret key, catalog database passwords
//! in the URL and in a password file, a truth database URL); the binaries run the success path,
//! every failure path below, `checkpoints list` and every `--help`; no planted value may appear
//! in anything they print.
//!
//! Both need the broker's SASL listeners (`RECON_KAFKA_SASL_*` from `infra/local/env`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use recon_pipeline::config::Config;
use recon_pipeline::reconcile::{self, Expected};
use recon_pipeline::{demo, generate, lakehouse};
use recon_tests::pipeline::{binary, wait_with_deadline};
use recon_tests::{ENV_REQUIRE_SERVICES, Services, services_or_skip, unique_name};

/// The broker's authenticated listeners, from `infra/local/env`.
struct Sasl {
    plaintext: String,
    ssl: String,
    mechanism: String,
    user: String,
    password: String,
    ca: String,
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
fn sasl_or_skip(test: &str) -> Option<(Services, Sasl)> {
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

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let res = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        ))
        .expect("create topic");
    for r in res {
        r.expect("topic created");
    }
}

/// Publishes a small seeded traffic over PLAINTEXT (the job is what must authenticate).
fn publish(s: &Services, topic: &str, trips: u64) -> Expected {
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
fn split_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("URL");
    let (creds, host) = rest
        .rsplit_once('@')
        .expect("credentials in the catalog URL");
    let (user, pw) = creds.split_once(':').expect("user:password");
    (format!("{scheme}://{user}@{host}"), pw.to_string())
}

/// A job on the real services, as [`job_toml`] writes it.
struct JobSpec<'a> {
    name: &'a str,
    /// Bootstrap of the SASL listener, and its `security.protocol`.
    brokers: &'a str,
    protocol: &'a str,
    /// A `[source]` line with the SASL password (or empty).
    source_secret: &'a str,
    catalog_uri: &'a str,
    /// A `[catalog]` line with the database password (or empty).
    catalog_password: &'a str,
}

/// The configuration of `job`: SASL source, PostgreSQL catalog, S3 warehouse and checkpoints with
/// credentials from the AWS environment only.
fn job_toml(s: &Services, sasl: &Sasl, job: &JobSpec<'_>) -> String {
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

/// The `batch-verify` binary of this build (built if missing), beside `recon-pipeline`.
fn batch_verify_binary() -> PathBuf {
    let bin = binary().with_file_name("batch-verify");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "batch-verify", "--bin", "batch-verify"])
            .status()
            .expect("cargo build batch-verify");
        assert!(status.success(), "building batch-verify failed");
    }
    bin
}

/// Runs `bin args` with `env` (stdout and stderr to one log file), bounded by `deadline`.
fn run(
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

#[test]
fn job_reads_over_sasl_ssl_and_a_wrong_password_stops_it() {
    let test = "job_reads_over_sasl_ssl_and_a_wrong_password_stops_it";
    let Some((s, sasl)) = sasl_or_skip(test) else {
        return;
    };
    let name = unique_name("sec_sasl");
    let expected = publish(&s, &format!("{name}.events"), 200);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("recon.toml");
    std::fs::write(
        &config,
        job_toml(
            &s,
            &sasl,
            &JobSpec {
                name: &name,
                brokers: &sasl.ssl,
                protocol: "SASL_SSL",
                source_secret: "",
                catalog_uri: &s.pg_catalog_url,
                catalog_password: "",
            },
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let s3_env = || {
        vec![
            ("AWS_ACCESS_KEY_ID", s.s3.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", s.s3.secret_access_key.clone()),
        ]
    };
    let args = [
        "run",
        "--config",
        &config_arg,
        "--exit-when-idle-ms",
        "3000",
    ];

    // A wrong password: stopped before anything is claimed, naming the cause.
    let mut env = s3_env();
    env.push(("RECON__SOURCE__SASL_PASSWORD", "not-the-password".into()));
    let started = std::time::Instant::now();
    let (code, out) = run(
        dir.path(),
        "wrong",
        &binary(),
        &args,
        &env,
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        out.contains("refused the connection")
            && out.contains("SASL authentication error")
            && out.contains("source.sasl_password"),
        "{out}"
    );

    // The right one, verbatim from the environment: every event lands exactly once.
    let mut env = s3_env();
    env.push(("RECON__SOURCE__SASL_PASSWORD", sasl.password.clone()));
    let (code, out) = run(
        dir.path(),
        "right",
        &binary(),
        &args,
        &env,
        Duration::from_secs(180),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("records {}", expected.records)),
        "{out}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rec = rt.block_on(async {
        // The test process reads the tables with the same file (and the same S3 credentials).
        let mut cfg = Config::load(Some(&config)).expect("config");
        cfg.catalog.properties.extend([
            ("s3.access-key-id".to_string(), s.s3.access_key_id.clone()),
            (
                "s3.secret-access-key".to_string(),
                s.s3.secret_access_key.clone(),
            ),
        ]);
        let catalog = lakehouse::open_catalog(&cfg).await.expect("catalog");
        reconcile::check(catalog.as_ref(), &cfg, &expected)
            .await
            .expect("reconcile")
    });
    assert!(rec.is_clean(), "{rec}");
    assert_eq!(rec.ledger_rows, expected.events.len() as u64);
}

#[test]
fn secrets_never_printed() {
    let Some((s, sasl)) = sasl_or_skip("secrets_never_printed") else {
        return;
    };
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let planted_sasl = format!("planted-sasl-{id}");
    let planted_s3 = format!("planted-s3-secret-{id}");
    let planted_pg_file = format!("planted-pg-file-{id}");
    let planted_pg_url = format!("planted-pg-url-{id}");
    let planted_truth = format!("planted-truth-{id}");
    let (catalog_uri, pg_password) = split_password(&s.pg_catalog_url);
    let with_pg_url = catalog_uri.replacen('@', &format!(":{planted_pg_url}@"), 1);
    let truth_url = catalog_uri.replacen('@', &format!(":{planted_truth}@"), 1);

    let name = unique_name("sec_print");
    let expected = publish(&s, &format!("{name}.events"), 50);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let logs = d.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let file = |n: &str, text: &str| {
        let p = d.join(n);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let sasl_file = file("kafka-password", &format!("{}\n", sasl.password));
    let sasl_wrong_file = file("kafka-wrong", &format!("{planted_sasl}\n"));
    let pg_file = file("pg-password", &format!("{pg_password}\n"));
    let pg_wrong_file = file("pg-wrong", &format!("{planted_pg_file}\n"));
    let toml = |source_secret: &str, uri: &str, catalog_secret: &str| {
        job_toml(
            &s,
            &sasl,
            &JobSpec {
                name: &name,
                brokers: &sasl.plaintext,
                protocol: "SASL_PLAINTEXT",
                source_secret,
                catalog_uri: uri,
                catalog_password: catalog_secret,
            },
        )
    };
    let ok = file(
        "ok.toml",
        &toml(
            &format!("sasl_password_file = \"{sasl_file}\""),
            &catalog_uri,
            &format!("password_file = \"{pg_file}\""),
        ),
    );
    let bad_catalog_file = file(
        "bad-catalog-file.toml",
        &toml(
            &format!("sasl_password_file = \"{sasl_file}\""),
            &catalog_uri,
            &format!("password_file = \"{pg_wrong_file}\""),
        ),
    );
    let bad_catalog_url = file(
        "bad-catalog-url.toml",
        &toml(
            &format!("sasl_password_file = \"{sasl_file}\""),
            &with_pg_url,
            "",
        ),
    );
    let unterminated = file(
        "unterminated.toml",
        &toml(
            &format!("sasl_password = \"{planted_sasl}"),
            &catalog_uri,
            "",
        ),
    );
    // Every run sees the S3 secret (the only S3 credentials there are) and a truth URL.
    let base_env = vec![
        ("AWS_ACCESS_KEY_ID", format!("planted-key-id-{id}")),
        ("AWS_SECRET_ACCESS_KEY", planted_s3.clone()),
        ("BATCH_VERIFY_TRUTH_URL", truth_url.clone()),
        ("RUST_LOG", "info".to_string()),
    ];
    let env_plus = |extra: &[(&'static str, String)]| {
        let mut e = base_env.clone();
        e.extend(extra.iter().cloned());
        e
    };
    let pipeline = binary();
    let verify = batch_verify_binary();
    let long = Duration::from_secs(180);
    let short = Duration::from_secs(60);
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut expect = |label: &str,
                      bin: &Path,
                      args: &[&str],
                      env: Vec<(&str, String)>,
                      want_code: i32,
                      needle: &str| {
        let (code, out) = run(
            &logs,
            label,
            bin,
            args,
            &env,
            if want_code == 0 { long } else { short },
        );
        assert_eq!(code, Some(want_code), "{label}: {out}");
        assert!(
            out.contains(needle),
            "{label}: expected {needle:?} in:\n{out}"
        );
        outputs.push((label.to_string(), out));
    };
    let run_args = |config: &str| {
        vec![
            "run".to_string(),
            "--config".to_string(),
            config.to_string(),
            "--exit-when-idle-ms".to_string(),
            "2000".to_string(),
        ]
    };
    let run_ok = run_args(&ok);

    // Success: SASL over a password file, catalog password from a file, S3 from AWS_*; every
    // library's trace logs included.
    expect(
        "run ok",
        &pipeline,
        &as_refs(&run_ok),
        env_plus(&[("RUST_LOG", "trace".into())]),
        0,
        &format!("records {}", expected.records),
    );
    expect(
        "checkpoints list",
        &pipeline,
        &["checkpoints", "list", "--config", &ok],
        env_plus(&[]),
        0,
        "GenerationStart",
    );
    // Failure paths.
    expect(
        "wrong sasl password",
        &pipeline,
        &as_refs(&run_ok),
        env_plus(&[("RECON__SOURCE__SASL_PASSWORD_FILE", sasl_wrong_file.clone())]),
        1,
        "SASL authentication error",
    );
    expect(
        "bad broker",
        &pipeline,
        &as_refs(&run_ok),
        env_plus(&[("RECON__SOURCE__BROKERS", "127.0.0.1:1".into())]),
        1,
        "cannot reach Kafka",
    );
    expect(
        "bad catalog password file",
        &pipeline,
        &as_refs(&run_args(&bad_catalog_file)),
        env_plus(&[]),
        1,
        "cannot open the Iceberg catalog",
    );
    expect(
        "bad catalog password in url",
        &pipeline,
        &as_refs(&run_args(&bad_catalog_url)),
        env_plus(&[]),
        1,
        ":***@",
    );
    expect(
        "catalog password twice",
        &pipeline,
        &as_refs(&run_args(&bad_catalog_url)),
        env_plus(&[("RECON__CATALOG__PASSWORD", planted_pg_file.clone())]),
        2,
        "already holds a password",
    );
    expect(
        "sasl password twice",
        &pipeline,
        &as_refs(&run_ok),
        env_plus(&[("RECON__SOURCE__SASL_PASSWORD", planted_sasl.clone())]),
        2,
        "both set",
    );
    expect(
        "invalid value",
        &pipeline,
        &as_refs(&run_ok),
        env_plus(&[("RECON__CHECKPOINT__INTERVAL_MS", "soon".into())]),
        2,
        "checkpoint.interval_ms",
    );
    expect(
        "misspelt secret key",
        &pipeline,
        &as_refs(&run_ok),
        env_plus(&[("RECON__SOURCE__SASL_PASWORD", planted_sasl.clone())]),
        2,
        "sasl_paswor",
    );
    expect(
        "unsupported catalog scheme",
        &pipeline,
        &as_refs(&run_ok),
        env_plus(&[(
            "RECON__CATALOG__URI",
            format!("mysql://recon:{planted_pg_url}@127.0.0.1/db"),
        )]),
        2,
        "catalog.uri",
    );
    expect(
        "unterminated toml string",
        &pipeline,
        &as_refs(&run_args(&unterminated)),
        env_plus(&[]),
        2,
        "TOML parse error",
    );
    expect(
        "batch-verify kafka truth over sasl",
        &verify,
        &[
            "--config",
            &ok,
            "--date",
            "2025-03-03",
            "--truth",
            "kafka",
            "--no-record",
            "--no-progress",
        ],
        env_plus(&[]),
        0,
        "CLEAN",
    );
    expect(
        "batch-verify kafka truth wrong sasl password",
        &verify,
        &[
            "--config",
            &ok,
            "--date",
            "2025-03-03",
            "--truth",
            "kafka",
            "--no-record",
            "--no-progress",
        ],
        env_plus(&[("RECON__SOURCE__SASL_PASSWORD_FILE", sasl_wrong_file.clone())]),
        2,
        "refused the connection",
    );
    expect(
        "batch-verify bad truth",
        &verify,
        &[
            "--config",
            &ok,
            "--date",
            "2025-03-03",
            "--truth",
            "postgres",
            "--no-record",
            "--no-progress",
        ],
        env_plus(&[]),
        2,
        "COULD NOT VERIFY",
    );
    // Every --help, with every planted value in the environment.
    let helps: [&[&str]; 10] = [
        &["--help"],
        &["run", "--help"],
        &["demo", "--help"],
        &["bench", "--help"],
        &["generate", "--help"],
        &["rewind", "--help"],
        &["checkpoints", "--help"],
        &["checkpoints", "list", "--help"],
        &["checkpoints", "show", "--help"],
        &["help", "run"],
    ];
    let secret_env = || {
        env_plus(&[
            ("RECON__SOURCE__SASL_PASSWORD", planted_sasl.clone()),
            ("RECON__CATALOG__PASSWORD", planted_pg_file.clone()),
            ("RECON__CATALOG__URI", with_pg_url.clone()),
        ])
    };
    for args in helps {
        expect(
            &format!("recon-pipeline {}", args.join(" ")),
            &pipeline,
            args,
            secret_env(),
            0,
            "Usage",
        );
    }
    expect(
        "batch-verify --help",
        &verify,
        &["--help"],
        secret_env(),
        0,
        "BATCH_VERIFY_TRUTH_URL",
    );

    let planted = [
        planted_sasl.as_str(),
        &planted_s3,
        &planted_pg_file,
        &planted_pg_url,
        &planted_truth,
        &sasl.password,
        &format!(":{pg_password}@"),
    ];
    let mut leaks = Vec::new();
    for (label, out) in &outputs {
        for p in planted {
            for line in out.lines().filter(|l| l.contains(p)) {
                leaks.push(format!("{label}: {p:?} in: {line}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets printed:\n{}", leaks.join("\n"));
    assert!(outputs.len() >= 26, "{} runs", outputs.len());
}
