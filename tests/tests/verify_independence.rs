//! batch-verify proves the job's output; it must not share the job's logic. Its dependency tree
//! (normal, build and dev edges alike) holds `recon-schemas` and `recon-common` and never
//! `recon-pipeline` (docs/ARCHITECTURE.md, "batch-verify: what keeps the proof honest").

use std::process::Command;

fn tree(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["tree", "-p", package, "-e", "all", "--prefix", "none"])
        .args(["--format", "{p}"])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn batch_verify_never_depends_on_the_job() {
    let crates = tree("batch-verify");
    assert!(crates.iter().any(|c| c == "recon-schemas"), "{crates:?}");
    assert!(crates.iter().any(|c| c == "recon-common"), "{crates:?}");
    assert!(
        !crates.iter().any(|c| c == "recon-pipeline"),
        "batch-verify's dependency tree reaches recon-pipeline: move what it needs into \
         recon-common (plumbing only) or write the verifier's own"
    );
}

#[test]
fn the_shared_crate_holds_no_job_code() {
    let crates = tree("recon-common");
    assert!(
        !crates
            .iter()
            .any(|c| c == "recon-pipeline" || c == "batch-verify"),
        "{crates:?}"
    );
}
