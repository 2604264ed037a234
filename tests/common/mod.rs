//! Test helpers: a fresh store per test, on SQLite by default or on PostgreSQL when
//! `RECSYNC_TEST_DATABASE_URL` points at a server (each test gets its own database).
#![allow(dead_code)]

pub mod fidelity;
pub mod harness;

use recsync::store::Store;

/// A test database; keeps its temporary folder alive, or names the Postgres database to drop.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

impl TestDb {
    /// A new empty database, not yet migrated.
    pub async fn new() -> TestDb {
        match std::env::var("RECSYNC_TEST_DATABASE_URL") {
            Ok(admin) if !admin.is_empty() => {
                let name = format!("recsync_t_{}", hex::encode(rand::random::<[u8; 6]>()));
                let admin_store = sqlx::PgPool::connect(&admin)
                    .await
                    .expect("connect to RECSYNC_TEST_DATABASE_URL");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin_store)
                    .await
                    .expect("create test database");
                admin_store.close().await;
                // Through a transaction-pooling PgBouncer when one is given (its URL carries
                // `?pgbouncer=true`); the database is created and dropped directly.
                let through = std::env::var("RECSYNC_TEST_POOLER_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| admin.clone());
                let mut url = url::Url::parse(&through).expect("valid URL");
                url.set_path(&format!("/{name}"));
                TestDb {
                    url: url.to_string(),
                    _dir: None,
                    pg_admin: Some((admin, name)),
                }
            }
            _ => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDb {
                    url,
                    _dir: Some(dir),
                    pg_admin: None,
                }
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.pg_admin.is_some()
    }

    /// Connects and migrates.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    /// Drops a Postgres test database (SQLite files go with the temp dir).
    pub async fn cleanup(self, store: Store) {
        store.close().await;
        if let Some((admin, name)) = &self.pg_admin
            && let Ok(pool) = sqlx::PgPool::connect(admin).await
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&pool)
                .await;
            pool.close().await;
        }
    }
}

/// The `recsync` binary the process tests start: `RECSYNC_TEST_BIN` when set (a copy, so a
/// test can be repeated while the tree is rebuilt), else the one cargo built for this test.
pub fn recsync_bin() -> std::path::PathBuf {
    std::env::var_os("RECSYNC_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_recsync").into())
}

/// Runs a command to its end without blocking the test's runtime. An in-process server
/// (`harness::Harness`) runs its tasks on that runtime: frozen by a blocking wait in the middle
/// of a SQLite transaction, it would hold the database's write lock for as long as the command
/// runs, and the command would find the database locked.
pub async fn output(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("start the command"))
        .await
        .expect("the command's thread")
}

/// Polls `check` until it returns `Some`, or panics after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A child process killed (and waited for) when the test lets go of it, also when the test
/// fails: no server outlives its test.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port for a child process to listen on (a `recsync serve` the test starts, and starts
/// again on the same port after a kill). It is taken from below the kernel's ephemeral range,
/// where every port bound to 0 and the client end of every connection come from: a port found
/// by binding port 0 and letting it go can be taken by any connection made before the child
/// binds it, this process's or another test binary's, and the child then exits with "address in
/// use". Checked free by binding it once.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low < 12_000 {
        // No room below the range: the old way.
        return std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let span = low - 10_000;
    loop {
        let port = 10_000 + rand::random::<u16>() % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts the reference peer on a free port with the harness's protocol key; answers its URL
/// and its state.
pub fn spawn_peer() -> (String, std::sync::Arc<recsync::peer::PeerState>) {
    let peer = recsync::peer::Peer::from_listener(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        recsync::peer::PeerOptions {
            listen: String::new(),
            api_key: Some(harness::PEER_KEY.into()),
            id_field: "unique_id".into(),
            synthetic: Default::default(),
            signing_secret: None,
            callback: None,
        },
    )
    .unwrap();
    let url = peer.url();
    let state = peer.state.clone();
    tokio::spawn(peer.run());
    (url, state)
}

/// Waits until `base/readyz` answers 2xx, failing at once if `child` exits first.
pub async fn wait_ready(client: &reqwest::Client, base: &str, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not become ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every row of every table of the database at `url` (and, on PostgreSQL, every sequence's
/// position), as text: two dumps are equal only if nothing was written in between. The
/// `instances` table is left out (each process's heartbeat renews its row on its own).
#[allow(dead_code)]
pub async fn dump(url: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    use sqlx::Row;
    let mut out = std::collections::BTreeMap::new();
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for t in tables.into_iter().filter(|t| t != "instances") {
            let mut rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM \"{t}\" t"))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            rows.sort();
            out.insert(t, rows);
        }
        let seqs: Vec<String> = sqlx::query_scalar(
            "SELECT sequence_name::text FROM information_schema.sequences WHERE sequence_schema = 'public'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for s in seqs {
            let row = sqlx::query(&format!("SELECT last_value, is_called FROM \"{s}\""))
                .fetch_one(&pool)
                .await
                .unwrap();
            let (v, called): (i64, bool) = (row.get(0), row.get(1));
            out.insert(format!("sequence {s}"), vec![format!("{v} {called}")]);
        }
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&pool)
                .await
                .unwrap();
        for t in tables.into_iter().filter(|t| t != "instances") {
            let cols: Vec<String> =
                sqlx::query_scalar(&format!("SELECT name FROM pragma_table_info('{t}')"))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let list: Vec<String> = cols
                .iter()
                .map(|c| {
                    format!("CASE WHEN typeof(\"{c}\") = 'blob' THEN hex(\"{c}\") ELSE \"{c}\" END")
                })
                .collect();
            let mut rows: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT json_array({}) FROM \"{t}\"",
                list.join(", ")
            ))
            .fetch_all(&pool)
            .await
            .unwrap();
            rows.sort();
            out.insert(t, rows);
        }
        pool.close().await;
    }
    out
}
