//! Secrets kept out of every output, against the real services.
//!
//! `secrets_never_printed`: distinctive secret values are planted in configuration files,
//! secret files and the environment (SASL passwords, S3 secret key, catalog database passwords
//! in the URL and in a password file, a truth database URL); the binaries run the success path
//! (at trace level), every failure path below, `checkpoints list`, batch-verify over SASL and
//! every `--help`; no planted value may appear in anything they print.
//!
//! `no_credential_in_any_log_line`: S3 keys in `[catalog.properties]` and
//! `[checkpoint.store_options]`, the catalog database password in its URL and the SASL password;
//! `run`, `maintain`, `checkpoints list` and batch-verify at `RUST_LOG=trace`, in both log
//! formats: no line may hold a planted value, percent-encoded or in base64 (issue 13, finding
//! 7: reqsign printed the S3 secret key in 168 DEBUG lines of one run).
//!
//! Needs the broker's SASL listeners (`RECON_KAFKA_SASL_*` from `infra/local/env`).

use std::path::Path;
use std::time::Duration;

use recon_tests::pipeline::binary;
use recon_tests::security::{
    JobSpec, add_to_section, as_refs, batch_verify_binary, job_toml, leaks, publish, run,
    sasl_or_skip, split_password,
};
use recon_tests::unique_name;

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
        // A refused login is a configuration stop: restarting with the same secret cannot help.
        2,
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

#[test]
fn no_credential_in_any_log_line() {
    let Some((s, sasl)) = sasl_or_skip("no_credential_in_any_log_line") else {
        return;
    };
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    // `/` and `+` as in real AWS secret keys, so the percent-encoded form differs.
    let planted_catalog_s3 = format!("planted/catalog+s3-{id}");
    let planted_store_s3 = format!("planted/store+s3-{id}");
    let planted_env = format!("planted-env-secret-{id}");
    let (_, pg_password) = split_password(&s.pg_catalog_url);
    let name = unique_name("sec_logs");
    let expected = publish(&s, &format!("{name}.events"), 30);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let logs = d.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let sasl_file = d.join("kafka-password");
    std::fs::write(&sasl_file, format!("{}\n", sasl.password)).unwrap();
    let toml = job_toml(
        &s,
        &sasl,
        &JobSpec {
            name: &name,
            brokers: &sasl.plaintext,
            protocol: "SASL_PLAINTEXT",
            source_secret: &format!("sasl_password_file = \"{}\"", sasl_file.display()),
            // The database password inside the URL.
            catalog_uri: &s.pg_catalog_url,
            catalog_password: "",
        },
    );
    let toml = add_to_section(
        &toml,
        "catalog.properties",
        &[
            format!("\"s3.access-key-id\" = \"planted-catalog-key-id-{id}\""),
            format!("\"s3.secret-access-key\" = \"{planted_catalog_s3}\""),
        ],
    );
    let toml = add_to_section(
        &toml,
        "checkpoint.store_options",
        &[
            format!("aws_access_key_id = \"planted-store-key-id-{id}\""),
            format!("aws_secret_access_key = \"{planted_store_s3}\""),
        ],
    );
    let config = d.join("job.toml");
    std::fs::write(&config, toml).unwrap();
    let config = config.display().to_string();
    let env = |format: &str| {
        vec![
            ("RUST_LOG", "trace".to_string()),
            ("RECON_LOG_FORMAT", format.to_string()),
            ("AWS_SECRET_ACCESS_KEY", planted_env.clone()),
            ("AWS_ACCESS_KEY_ID", format!("planted-env-key-id-{id}")),
        ]
    };
    let pipeline = binary();
    let verify = batch_verify_binary();
    let run_args = ["run", "--config", &config, "--exit-when-idle-ms", "2000"];
    let records = format!("records {}", expected.records);
    let steps: [(&str, &Path, &[&str], &str, &str); 6] = [
        ("run human", &pipeline, &run_args, "human", &records),
        (
            "run json (nothing new)",
            &pipeline,
            &run_args,
            "json",
            "records 0",
        ),
        (
            "checkpoints list json",
            &pipeline,
            &["checkpoints", "list", "--config", &config],
            "json",
            "GenerationStart",
        ),
        (
            "maintain human",
            &pipeline,
            &["maintain", "--config", &config],
            "human",
            "ledger_events",
        ),
        (
            "maintain json",
            &pipeline,
            &["maintain", "--config", &config],
            "json",
            "ledger_events",
        ),
        (
            "batch-verify kafka truth",
            &verify,
            &[
                "--config",
                &config,
                "--date",
                "2025-03-03",
                "--truth",
                "kafka",
                "--no-record",
                "--no-progress",
            ],
            "human",
            "CLEAN",
        ),
    ];
    let mut outputs = Vec::new();
    for (label, bin, args, format, needle) in steps {
        let (code, out) = run(
            &logs,
            label,
            bin,
            args,
            &env(format),
            Duration::from_secs(180),
        );
        assert_eq!(code, Some(0), "{label}: {out}");
        assert!(
            out.contains(needle),
            "{label}: expected {needle:?} in:\n{out}"
        );
        outputs.push((label.to_string(), out));
    }
    // The runs did log at debug and trace, S3 requests included: the test looked where the
    // credentials are used.
    for (label, out) in &outputs[..2] {
        assert!(
            out.contains("opendal") && out.contains("TRACE"),
            "{label}: no trace lines of the S3 file IO: {out:.2000}"
        );
    }
    // Second guard: the signer's targets are capped at INFO whatever RUST_LOG says.
    for (label, out) in &outputs {
        let signer_debug = out
            .lines()
            .filter(|l| l.contains("reqsign") && (l.contains("DEBUG") || l.contains("TRACE")))
            .count();
        assert_eq!(
            signer_debug, 0,
            "{label}: reqsign logged below INFO:\n{out:.3000}"
        );
    }
    let planted = [
        planted_catalog_s3,
        planted_store_s3,
        planted_env,
        sasl.password.clone(),
        format!(":{pg_password}@"),
    ];
    let found = leaks(&outputs, &planted);
    let per_step: Vec<String> = outputs
        .iter()
        .map(|(label, _)| {
            let n = found
                .iter()
                .filter(|f| f.starts_with(&format!("{label}:")))
                .count();
            format!("{label}: {n}")
        })
        .collect();
    let shown: Vec<&str> = found.iter().take(20).map(String::as_str).collect();
    assert!(
        found.is_empty(),
        "{} lines print a credential ({}):\n{}",
        found.len(),
        per_step.join(", "),
        shown.join("\n")
    );
}
