//! A configuration batch-verify cannot use stops it with exit 2 ("could not verify") and a
//! message that says what to fix, before anything is read or recorded.

use std::process::Command;

fn verify(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_batch-verify"))
        .args(args)
        .env_remove("RECON_CONFIG")
        .output()
        .expect("batch-verify runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn a_missing_or_broken_configuration_is_exit_2_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml").display().to_string();
    let (code, text) = verify(&[
        "--config",
        &missing,
        "--date",
        "2025-03-03",
        "--truth",
        "postgres",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("absent.toml"), "names the file: {text}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "job_id = \"j\"\n[catalog]\nuri = 42\n").unwrap();
    let broken = broken.display().to_string();
    let (code, text) = verify(&[
        "--config",
        &broken,
        "--date",
        "2025-03-03",
        "--truth",
        "postgres",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("uri"), "names the key: {text}");

    let (code, text) = verify(&[
        "--config",
        &broken,
        "--date",
        "2025-13-45",
        "--truth",
        "postgres",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("2025-13-45"), "names the bad date: {text}");
}
