//! With no API key configured, recsync trusts local callers only, so it listens on loopback
//! whatever address it was given.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// This machine's address on its default route, if it has one (no packet is sent).
fn outside_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:1").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn without_keys_the_server_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        format!(
            "database_url = \"sqlite://{}/t.db\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_recsync"))
        .args([
            "serve",
            "--config",
            "recsync.toml",
            "--listen",
            &format!("0.0.0.0:{port}"),
        ])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let outside = outside_ip()
        .map(|ip| std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2)));
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("binds to loopback only"), "{log}");
    if let Some(r) = outside {
        assert!(r.is_err(), "reachable from outside loopback");
    }
}
