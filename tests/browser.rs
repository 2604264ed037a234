//! The web UI in a real browser: `node tests/browser/ui.mjs` (playwright-core driving Debian's
//! Chromium) against `recsync demo`. `.ci/run` installs both; elsewhere the test says what is
//! missing and stops, and with `CI=true` a missing prerequisite fails it.

use std::path::Path;
use std::process::Command;

#[test]
fn the_web_ui_works_in_a_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    let mut missing = Vec::new();
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node (Node.js)".to_string());
    }
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        missing.push("playwright-core (npm ci --prefix tests/browser)".to_string());
    }
    if !Path::new(&chromium).exists() {
        missing.push(format!("Chromium at {chromium} (apt-get install chromium)"));
    }
    if !missing.is_empty() {
        let msg = format!("browser tests need: {}", missing.join(", "));
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED (not in CI): {msg}");
        return;
    }
    let shots = root.join("target/ui-screenshots");
    let out = Command::new("node")
        .arg(root.join("tests/browser/ui.mjs"))
        .env("RECSYNC_BIN", env!("CARGO_BIN_EXE_recsync"))
        .env("SCREENSHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .current_dir(root)
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for page in [
        "01-dashboard",
        "03-change-log-failures",
        "04-change-diff",
        "07-dead-letters",
        "08-record-history",
        "09-configuration",
        "10-dropbox-trees",
        "11-held-deletes",
        "14-plan-round-trip",
        "15-change-diff-transformed",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "screenshot {page}: {text}"
        );
    }
}
