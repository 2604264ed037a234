//! The fake Odoo judged by real Odoo clients: `tests/odoo_fidelity.py` logs in, reads fields,
//! searches with domains, creates, writes, archives and deletes, and checks the errors, through
//! `odoorpc` (JSON-RPC) and `odoo-client-lib` (JSON-RPC and JSON-2).
//!
//! The interpreter is `RECSYNC_ODOO_PYTHON`, else `target/odoo-venv/bin/python` (which
//! `.ci/run` creates with both packages). Without it the test is skipped, except under
//! `CI=true`, where a missing prerequisite fails.

use recsync::peer::odoo::{FakeOdoo, OdooOptions};
use std::path::PathBuf;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("RECSYNC_ODOO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/odoo-venv/bin/python")
        });
    let ok = std::process::Command::new(&p)
        .args(["-c", "import odoorpc, odoolib"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odoorpc_and_odoo_client_lib_accept_the_fake_over_both_protocols() {
    let Some(python) = python() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and no Python with odoorpc and odoo-client-lib: run .ci/run, or set RECSYNC_ODOO_PYTHON"
        );
        eprintln!("skipped: no Python with odoorpc and odoo-client-lib (see .ci/run)");
        return;
    };
    let opts = OdooOptions::default();
    let fake = FakeOdoo::bind(opts.clone()).unwrap();
    let url = fake.url();
    let handle = fake.handle();
    let state = fake.state.clone();
    tokio::spawn(fake.run());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/odoo_fidelity.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args([
                &url,
                &opts.database,
                &opts.login,
                &opts.password,
                &opts.api_key,
            ])
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
        "the client scenario failed:\n{stdout}\n{stderr}"
    );
    let n: usize = stdout
        .trim()
        .strip_prefix("OK ")
        .and_then(|s| s.strip_suffix(" checks"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    assert!(n >= 50, "only {n} checks ran");
    // Both protocols were used.
    let calls = state.calls();
    assert!(calls.iter().any(|(p, _, _)| p == "jsonrpc"));
    assert!(calls.iter().any(|(p, _, _)| p == "json2"));
}
