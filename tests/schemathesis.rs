//! A schemathesis run against `/openapi.json` on a bounded budget: generated and mutated
//! requests to every documented operation, with an admin key, and no 5xx, no response that
//! breaks its documented schema, status or content type.
//!
//! The tool is `RECSYNC_SCHEMATHESIS`, else `target/st-venv/bin/schemathesis` (which `.ci/run`
//! installs from PyPI). Without it the test is skipped, except under `CI=true`. The budget is
//! `RECSYNC_SCHEMATHESIS_SECONDS` (default 45).

mod common;

use common::harness::{ADMIN_KEY, Harness};
use std::path::PathBuf;

fn tool() -> Option<PathBuf> {
    let p = std::env::var_os("RECSYNC_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/st-venv/bin/schemathesis")
        });
    std::process::Command::new(&p)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(tool) = tool() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and no schemathesis: run .ci/run, or set RECSYNC_SCHEMATHESIS"
        );
        eprintln!("skipped: schemathesis is not installed (see .ci/run)");
        return;
    };
    let seconds = std::env::var("RECSYNC_SCHEMATHESIS_SECONDS").unwrap_or_else(|_| "45".into());
    let h = Harness::start().await;
    let url = h.url("/openapi.json");
    let dir = h.dir.path().to_path_buf();
    // schemathesis itself may crash inside Python. Such a run reports a
    // `Runtime Error` and no failure of the server; it is run once more. Any failure it finds
    // is reported at once.
    let mut attempt = 0;
    let out = loop {
        attempt += 1;
        let out = run_once(&tool, &url, &dir, &seconds).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tool_crashed = !out.status.success()
            && stdout.contains("Runtime Error")
            && !stdout.contains("Failures:");
        if tool_crashed && attempt < 2 {
            let errors: String = stdout
                .lines()
                .skip_while(|l| !l.contains("ERRORS"))
                .take_while(|l| !l.contains("SUMMARY"))
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!(
                "schemathesis crashed on its own (no failure found); running it again. It said:\n{errors}"
            );
            continue;
        }
        break out;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: String = stdout
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    println!("{summary}");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("generated"), "no test cases ran:\n{stdout}");
    h.stop().await;
}

async fn run_once(
    tool: &std::path::Path,
    url: &str,
    dir: &std::path::Path,
    seconds: &str,
) -> std::process::Output {
    let (tool, url, dir, seconds) = (
        tool.to_path_buf(),
        url.to_string(),
        dir.to_path_buf(),
        seconds.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(tool)
            .args([
                "run",
                &url,
                "--header",
                &format!("X-Api-Key: {ADMIN_KEY}"),
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
                "--max-examples",
                "12",
                "--max-time",
                &seconds,
                // One worker: CPython 3.11 before 3.11.8 miscounts the AST recursion depth when
                // two threads parse at once (gh-106905), which hypothesis does for every
                // lambda it describes; the run then dies with "AST constructor recursion depth
                // mismatch".
                "--workers",
                "1",
                "--suppress-health-check",
                "all",
                "--request-timeout",
                "20",
            ])
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .unwrap()
    .unwrap()
}
