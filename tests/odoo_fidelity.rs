//! The fake Odoo judged by real Odoo clients: `tests/odoo_fidelity.py` logs in, reads fields,
//! searches with domains, creates, writes, archives and deletes, and checks the errors, through
//! `odoorpc` (JSON-RPC) and `odoo-client-lib` (JSON-RPC and JSON-2).
//!
//! The interpreter is `RECSYNC_ODOO_PYTHON`, else `target/odoo-venv/bin/python` (which
//! `.ci/run` creates with both packages). Without it the test is skipped, except under
//! `CI=true`, where a missing prerequisite fails.

mod common;

use recsync::peer::odoo::{FakeOdoo, OdooOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odoorpc_and_odoo_client_lib_accept_the_fake_over_both_protocols() {
    let Some(python) = common::fidelity::python(
        "RECSYNC_ODOO_PYTHON",
        "odoo-venv",
        "import odoorpc, odoolib",
        "odoorpc and odoo-client-lib",
    ) else {
        return;
    };
    let opts = OdooOptions::default();
    let fake = FakeOdoo::bind(opts.clone()).unwrap();
    let url = fake.url();
    let handle = fake.handle();
    let state = fake.state.clone();
    tokio::spawn(fake.run());
    let args = vec![url, opts.database, opts.login, opts.password, opts.api_key];
    let n = common::fidelity::run_checks(python, "odoo_fidelity.py", args).await;
    handle.stop(false).await;
    assert!(n >= 50, "only {n} checks ran");
    // Both protocols were used.
    let calls = state.calls();
    assert!(calls.iter().any(|(p, _, _)| p == "jsonrpc"));
    assert!(calls.iter().any(|(p, _, _)| p == "json2"));
}
