//! Tests of [`crate::config`]: loading, validation, secrets, and the reference file.

use super::*;

fn load_str(toml: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, toml).unwrap();
    Config::load(Some(&p))
}

#[test]
fn defaults_resolve() {
    let c = Config::load(None).unwrap();
    assert_eq!(c.checkpoint_interval, Duration::from_secs(10));
    assert_eq!(c.delivery, DeliveryMode::ExactlyOnce);
    assert!(
        c.catalog.warehouse.starts_with("file:///"),
        "{}",
        c.catalog.warehouse
    );
}

#[test]
fn unknown_key_is_named() {
    let e = load_str("[source]\nbrokerz = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("brokerz"), "{e}");
}

#[test]
fn bad_values_say_what_to_fix() {
    let e = load_str("[catalog]\nuri = \"mysql://u:pw@h/db\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("catalog.uri") && !e.contains("pw"), "{e}");
    let e = load_str("job_id = \"a b\"\n").unwrap_err().to_string();
    assert!(e.contains("job_id"), "{e}");
    let e = load_str("delivery = \"twice\"\n").unwrap_err().to_string();
    assert!(e.contains("delivery"), "{e}");
    let e = load_str("[checkpoint]\nstore = \"ftp://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpoint.store"), "{e}");
    for bad in ["retain_last = 0", "orphan_older_than_ms = 60000"] {
        let e = load_str(&format!("[maintenance]\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(bad.split(' ').next().unwrap()), "{e}");
    }
}

#[test]
fn missing_file_is_an_error() {
    let e = Config::load(Some(Path::new("/nonexistent/recon.toml"))).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/recon.toml"));
}

/// The reference file lists every key the code knows, and loads.
#[test]
fn example_lists_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recon.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    Config::load(Some(&path)).unwrap();
    let defaults = toml::Value::try_from(RawConfig::default()).unwrap();
    let mut missing = Vec::new();
    let top = defaults.as_table().unwrap();
    for (k, v) in top {
        match v.as_table() {
            Some(section) => {
                assert!(text.contains(&format!("[{k}]")), "section [{k}] missing");
                for key in section.keys() {
                    let is_table = section[key].is_table();
                    let needle = if is_table {
                        format!("[{k}.{key}]")
                    } else {
                        format!("\n{key} = ")
                    };
                    if !text.contains(&needle) {
                        missing.push(format!("{k}.{key}"));
                    }
                }
            }
            None => {
                if !text.contains(&format!("\n{k} = ")) {
                    missing.push(k.clone());
                }
            }
        }
    }
    assert!(missing.is_empty(), "recon.example.toml lacks {missing:?}");
}

#[test]
fn redaction_hides_passwords() {
    assert_eq!(
        redact_url("postgres://u:secret@h:5/db"),
        "postgres://u:***@h:5/db"
    );
    assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
}

#[test]
fn secrets_from_files_land_where_the_clients_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let (kpw, cpw) = (dir.path().join("kafka-pw"), dir.path().join("pg-pw"));
    std::fs::write(&kpw, "planted-sasl-1\n").unwrap();
    std::fs::write(&cpw, "planted pg/2@x\n").unwrap();
    let c = load_str(&format!(
        "[source]\nsasl_password_file = \"{}\"\n[source.properties]\n\"sasl.username\" = \"alice\"\n\
         [catalog]\nuri = \"postgres://recon@h:5/db\"\npassword_file = \"{}\"\n\
         [checkpoint.store_options]\naws_secret_access_key = \"planted-s3-3\"\n",
        kpw.display(),
        cpw.display()
    ))
    .unwrap();
    assert_eq!(c.source.properties["sasl.password"], "planted-sasl-1");
    assert_eq!(
        c.catalog.uri,
        "postgres://recon:planted%20pg%2F2%40x@h:5/db"
    );
    let debug = format!("{c:?}");
    for planted in [
        "planted-sasl-1",
        "planted%20pg",
        "planted pg",
        "planted-s3-3",
    ] {
        assert!(!debug.contains(planted), "{planted} in {debug}");
    }
    assert!(
        debug.contains("alice") && debug.contains("recon:***@h"),
        "{debug}"
    );
}

#[test]
fn secret_conflicts_and_misplacements_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pw");
    std::fs::write(&f, "x").unwrap();
    let f = f.display();
    for (toml, needle) in [
        (
            format!("[source]\nsasl_password = \"pw-a\"\nsasl_password_file = \"{f}\"\n"),
            "both set",
        ),
        (
            "[source]\nsasl_password = \"pw-a\"\n[source.properties]\n\"sasl.password\" = \"pw-b\"\n".into(),
            "both set",
        ),
        (
            "[catalog]\nuri = \"postgres://u:pw-old@h/db\"\npassword = \"pw-new\"\n".into(),
            "already holds a password",
        ),
        ("[catalog]\npassword = \"pw-new\"\n".into(), "not a postgres:// URL"),
        (
            "[source]\nsasl_password_file = \"/nonexistent/pw\"\n".into(),
            "/nonexistent/pw",
        ),
    ] {
        let e = load_str(&toml).unwrap_err().to_string();
        assert!(e.contains(needle), "{toml}: {e}");
        assert!(!e.contains("pw-"), "a secret leaked: {e}");
    }
}

#[test]
fn bad_secret_values_are_not_repeated() {
    let e = load_str("[source]\nsasl_password = 918273645\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("source.sasl_password") && !e.contains("918273645"),
        "{e}"
    );
    let e = load_str("[catalog]\nuri = 918273645\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("catalog.uri") && !e.contains("918273645"), "{e}");
    let e = load_str("[source]\nsasl_password = \"planted-unterminated\n")
        .unwrap_err()
        .to_string();
    assert!(
        !e.contains("planted-unterminated") && e.contains("line 2"),
        "{e}"
    );
    let e = load_str("[source.properties]\nsasl = { password = \"p\" }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("sasl_password_file"), "{e}");
}

/// Loads a file setting `key` (dotted, `section.name`) to `value`; `expected` is `None` when
/// the value must be accepted, else a fragment of the refusal.
fn check(key: &str, value: i128, expected: Option<&str>) {
    let (section, name) = key.split_once('.').unwrap();
    let got = load_str(&format!("[{section}]\n{name} = {value}\n"));
    match (expected, got) {
        (None, Ok(_)) => {}
        (None, Err(e)) => panic!("{key} = {value} refused: {e}"),
        (Some(_), Ok(_)) => panic!("{key} = {value} accepted"),
        (Some(want), Err(e)) => {
            let e = e.to_string();
            assert!(e.contains(want), "{key} = {value}: {e:?} lacks {want:?}");
        }
    }
}

/// The values of issue 13 that panicked, aborted or were accepted.
#[test]
fn huge_values_are_refused_by_name() {
    let huge = i64::MAX as i128;
    for key in [
        "source.poll_batch_records_max",
        "source.queue_batches_max",
        "checkpoint.interval_ms",
        "commit.timeout_ms",
        "sink.file_size_bytes_target",
    ] {
        check(key, huge, Some(&format!("{key} = {huge} is outside ")));
    }
    check("source.queue_batches_max", 0, Some("is outside 1..=1024"));
}

/// Every numeric key: its bounds are accepted, one past them refused with the key, the value and
/// the range.
#[test]
fn every_numeric_key_has_a_range() {
    let keys = ranges::numeric_keys(&RawConfig::default());
    assert!(keys.len() >= 20, "{keys:?}");
    for n in keys {
        assert!(
            (n.min..=n.max).contains(&n.value),
            "default of {} outside its range",
            n.key
        );
        check(n.key, n.min, None);
        check(n.key, n.max, None);
        let range = format!("is outside {}..={}", n.min, n.max);
        check(
            n.key,
            n.max + 1,
            Some(&format!("{} = {} {range}", n.key, n.max + 1)),
        );
        if n.min > 0 {
            check(
                n.key,
                n.min - 1,
                Some(&format!("{} = {} {range}", n.key, n.min - 1)),
            );
        }
    }
}

/// docs/CONFIGURATION.md lists every key's range as the code has it.
#[test]
fn docs_list_every_range() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIGURATION.md");
    let text = std::fs::read_to_string(&path).unwrap();
    for n in ranges::numeric_keys(&RawConfig::default()) {
        let row = format!("| `{}` | {}..={} | {} |", n.key, n.min, n.max, n.why);
        assert!(text.contains(&row), "docs/CONFIGURATION.md lacks {row}");
    }
}

/// A `--config` that is missing, a directory, or sets nothing is refused by name (issue 13:
/// an empty file silently ran on the defaults).
#[test]
fn config_file_must_exist_and_set_something() {
    let dir = tempfile::tempdir().unwrap();
    let e = Config::load(Some(dir.path())).unwrap_err().to_string();
    assert!(
        e.contains(&dir.path().display().to_string()) && e.contains("is a directory"),
        "{e}"
    );
    for text in [
        "",
        "  \n\n",
        "# job_id = \"x\"\n",
        "[source]\n# nothing\n[source.properties]\n",
    ] {
        let e = load_str(text).unwrap_err().to_string();
        assert!(e.contains("c.toml sets no key"), "{text:?}: {e}");
        assert!(e.contains("pass no --config"), "{e}");
    }
    load_str("job_id = \"x\"\n").unwrap();
    load_str("[source]\ntopic = \"t\"\n").unwrap();
}

/// librdkafka keys the job sets itself are refused in `[source.properties]` and
/// `[alerts.properties]` (issue 13: `auto.offset.reset` silently overrode the job's offsets).
#[test]
fn properties_the_job_owns_are_refused() {
    let sections = [
        ("source", OWNED_CONSUMER_PROPERTIES),
        ("alerts", crate::config::outputs::OWNED_PRODUCER_PROPERTIES),
    ];
    for (section, owned) in sections {
        for (name, why, instead) in owned {
            let e = load_str(&format!("[{section}.properties]\n\"{name}\" = \"x\"\n"))
                .unwrap_err()
                .to_string();
            let key = format!("{section}.properties.\"{name}\" is set by the job");
            assert!(
                e.contains(&key) && e.contains(why) && e.contains(instead),
                "{e}"
            );
        }
    }
    let e = load_str("[source.properties]\n\"Auto.Offset.Reset\" = \"earliest\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("source.start_from"), "{e}");
    // Properties the job does not set still pass through.
    load_str("[source.properties]\n\"fetch.max.bytes\" = \"1048576\"\n").unwrap();
}

/// `[catalog.properties]` pool settings the SQL catalog parses with `unwrap()` are checked here
/// (a bad one panicked when the catalog opened).
#[test]
fn catalog_pool_properties_are_checked() {
    for (name, min, max, _) in ranges::CATALOG_POOL_PROPERTIES {
        for (v, ok) in [
            (min.to_string(), true),
            (max.to_string(), true),
            ((max + 1).to_string(), false),
            ((min - 1).to_string(), false),
            ("ten".to_string(), false),
        ] {
            let got = load_str(&format!("[catalog.properties]\n\"{name}\" = \"{v}\"\n"));
            match (ok, got) {
                (true, Ok(_)) => {}
                (false, Err(e)) => assert!(e.to_string().contains(name), "{e}"),
                (ok, got) => panic!("{name} = {v}: expected ok={ok}, got {:?}", got.err()),
            }
        }
    }
    let e = load_str("[catalog.properties]\n\"pool.test-before-acquire\" = \"yes\"\n").unwrap_err();
    assert!(e.to_string().contains("true or false"), "{e}");
}

#[test]
fn a_fleet_refuses_what_it_cannot_do() {
    let base = "[source]\nbrokers = \"127.0.0.1:9092\"\n[fleet]\ntasks = 8\n";
    let c = load_str(base).unwrap();
    assert_eq!(c.fleet.tasks, 8);
    for (extra, says) in [
        ("delivery = \"at-least-once\"\n", "exactly-once"),
        (
            "job_id = \"a-very-long-job-id-that-leaves-no-room-for-the-task-suffix-x\"\n",
            "too long",
        ),
    ] {
        let e = load_str(&format!("{extra}{base}")).unwrap_err().to_string();
        assert!(e.contains("fleet.tasks = 8") && e.contains(says), "{e}");
    }
    let e =
        load_str("[source]\npartitions = [1]\nbrokers = \"127.0.0.1:9092\"\n[fleet]\ntasks = 2\n")
            .unwrap_err()
            .to_string();
    assert!(e.contains("remove source.partitions"), "{e}");
    let e = load_str("[source]\nbrokers = \"mock\"\n[fleet]\ntasks = 2\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("real broker"), "{e}");
    let e = load_str("[fleet]\ntasks = 5000\n").unwrap_err().to_string();
    assert!(e.contains("fleet.tasks = 5000 is outside 0..=4096"), "{e}");
    // The optional outputs run per task (issue 16): accepted.
    let c = load_str(&format!(
        "[catalog]\nuri = \"postgres://u:p@127.0.0.1/c\"\n{base}[alerts]\nenabled = true\n[current_balances]\nenabled = true\n"
    ))
    .unwrap();
    assert!(c.alerts_watch.is_some() && c.current_balances_url.is_some());
}
