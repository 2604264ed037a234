//! The fake Dropbox judged by the official Python SDK: `tests/dropbox_fidelity.py` runs a
//! scenario (refresh, list, add, edit, move, delete, continue, reset, 429 both ways, 5xx,
//! expired token, signed notifications) against the fake, decoding every answer with the SDK's
//! validators and listings strictly.
//!
//! The interpreter is `RECSYNC_DROPBOX_PYTHON`, else `target/dropbox-venv/bin/python` (which
//! `.ci/run` creates with `dropbox` 12.x). Without it the test is skipped, except under
//! `CI=true`, where a missing prerequisite fails.

mod common;

use recsync::peer::dropbox::{FakeDropbox, FakeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_accepts_every_answer_of_the_fake() {
    let Some(python) = common::fidelity::python(
        "RECSYNC_DROPBOX_PYTHON",
        "dropbox-venv",
        "import dropbox, sys; sys.exit(0 if dropbox.__version__.startswith('12.') else 1)",
        "dropbox 12.x",
    ) else {
        return;
    };
    let fake = FakeDropbox::bind(FakeOptions::default()).unwrap();
    let url = fake.url();
    let handle = fake.handle();
    tokio::spawn(fake.run());
    let n = common::fidelity::run_checks(python, "dropbox_fidelity.py", vec![url]).await;
    handle.stop(false).await;
    assert!(n >= 50, "only {n} checks ran");
}
