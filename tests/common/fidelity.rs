//! What the fidelity tests share: the Python that runs a real client of a system against its
//! fake, and running the client's scenario script.

use std::path::PathBuf;

/// The interpreter `env_var` names, else `target/<venv>/bin/python` (which `.ci/run` creates),
/// if it runs `probe` (the imports the script needs). Without one the test is skipped (`None`),
/// except under `CI=true`, where a missing prerequisite fails.
pub fn python(env_var: &str, venv: &str, probe: &str, what: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/{venv}/bin/python"))
        });
    let ok = std::process::Command::new(&p)
        .args(["-c", probe])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and no Python with {what}: run .ci/run, or set {env_var}"
    );
    eprintln!("skipped: no Python with {what} (see .ci/run)");
    None
}

/// Runs `tests/<script>` with `args` and answers how many checks it made: it must succeed
/// and end by printing `OK <n> checks`.
pub async fn run_checks(python: PathBuf, script: &str, args: Vec<String>) -> usize {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(args)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the client scenario failed:\n{stdout}\n{stderr}"
    );
    stdout
        .trim()
        .strip_prefix("OK ")
        .and_then(|s| s.strip_suffix(" checks"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"))
}
