//! The fake Dropbox judged by the official Python SDK: `tests/dropbox_fidelity.py` runs a
//! scenario (refresh, list, add, edit, move, delete, continue, reset, 429 both ways, 5xx,
//! expired token, signed notifications) against the fake, decoding every answer with the SDK's
//! validators and listings strictly.
//!
//! The interpreter is `RECSYNC_DROPBOX_PYTHON`, else `target/dropbox-venv/bin/python` (which
//! `.ci/run` creates with `dropbox` 12.x). Without it the test is skipped, except under
//! `CI=true`, where a missing prerequisite fails.

use recsync::peer::dropbox::{FakeDropbox, FakeOptions};
use std::path::PathBuf;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("RECSYNC_DROPBOX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dropbox-venv/bin/python")
        });
    let ok = std::process::Command::new(&p)
        .args([
            "-c",
            "import dropbox, sys; sys.exit(0 if dropbox.__version__.startswith('12.') else 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_accepts_every_answer_of_the_fake() {
    let Some(python) = python() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and no Python with dropbox 12.x: run .ci/run, or set RECSYNC_DROPBOX_PYTHON"
        );
        eprintln!("skipped: no Python with dropbox 12.x (see .ci/run)");
        return;
    };
    let fake = FakeDropbox::bind(FakeOptions::default()).unwrap();
    let url = fake.url();
    let handle = fake.handle();
    tokio::spawn(fake.run());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dropbox_fidelity.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(&url)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    handle.stop(false).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK scenario failed:\n{stdout}\n{stderr}"
    );
    let n: usize = stdout
        .trim()
        .strip_prefix("OK ")
        .and_then(|s| s.strip_suffix(" checks"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    assert!(n >= 50, "only {n} checks ran");
}
