//! Kafka over SASL and TLS against the real broker.
//!
//! `job_reads_over_sasl_ssl_and_a_wrong_password_stops_it`: the real binary consumes a topic
//! through the broker's SASL_SSL listener (SCRAM-SHA-256, the local CA in `ssl.ca.location`, the
//! password verbatim from `RECON__SOURCE__SASL_PASSWORD`) and commits every event exactly once;
//! with a wrong password it stops within seconds, exit 2 (configuration: restarting will not help),
//! naming the SASL authentication failure.
//! Needs the broker's SASL listeners (`RECON_KAFKA_SASL_*` from `infra/local/env`).

use std::time::Duration;

use recon_pipeline::config::Config;
use recon_pipeline::{lakehouse, reconcile};
use recon_tests::pipeline::binary;
use recon_tests::security::{JobSpec, job_toml, publish, run, sasl_or_skip};
use recon_tests::unique_name;

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
    assert_eq!(
        code,
        Some(2),
        "a refused login is a configuration stop: {out}"
    );
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
