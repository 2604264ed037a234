//! The crash matrix: `recsync serve` is killed with SIGKILL at randomized points of its work
//! (`RECSYNC_CRASH_POINT=<point>:<n>`, see `src/crash.rs`), restarted, and checked, over and
//! over, while a mixed load runs: inbound real-time changes, pulled pages, outbox deliveries,
//! Dropbox notifications and hot reloads. After every kill the store is checked; at the end a
//! clean instance brings everything to rest and the final state is compared with the peer's and
//! the fake Dropbox's.
//!
//! 200 kill points on SQLite, 30 on PostgreSQL (`RECSYNC_CRASH_ITERATIONS` overrides; the seed
//! is printed, and `RECSYNC_CRASH_SEED` replays one). Every block of seven kill points arms each
//! point once, in a seeded shuffled order, so each point is always tried.
//! Local records are created and deleted through the records API, so the writer's own
//! transactions (`single.before_commit`: deletes and local edits) are killed too.

mod common;

use common::harness::MAPPING;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use recsync::peer::PeerState;
use recsync::peer::dropbox::{FakeDropbox, FakeOptions, FakeState};
use recsync::store::{ChangeFilter, Store};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "crash-matrix-admin-key-0123456789";

const POINTS: [&str; 7] = [
    "inbound.before_commit",
    "single.before_commit",
    "inbound.before_reply",
    "pull.before_confirm",
    "outbox.before_record",
    "dropbox.before_mirror",
    "reload.before_swap",
];

const DROPBOX: &str = r#"
[models.doc]
display = "name"
fields = { name = "char", path = "char", dbx_id = "char", rev = "char" }

[web_services.box]
kind = "dropbox"
app_key = "fake-app-key"
app_secret = "fake-app-secret"
refresh_token = "fake-refresh-token"
api_url = "@DBX@"

[external_models.box_files]
kind = "dropbox"
root = "/Mirror"
recursive = true

[syncs.BOX]
model = "doc"
external_model = "box_files"
web_service = "box"
direction = "to_local"
mode = "realtime"
limit = 3
propagate_deletes = true
# The matrix removes files while instances are killed, so one run after a restart may meet
# a fifth of the folder gone at once, which the default guard rightly holds for a person. The
# matrix is about durability (the guard has its own tests): let every delete through.
delete_guard = { max_ratio = 1.0 }
fields = [
  { local = "name",   external = "name" },
  { local = "path",   external = "path" },
  { local = "dbx_id", external = "id" },
  { local = "rev",    external = "rev" },
]
"#;

struct Env {
    dir: tempfile::TempDir,
    port: u16,
    base: String,
    client: reqwest::Client,
    peer: Arc<PeerState>,
    fake: Arc<FakeState>,
    store: Store,
    mapping: String,
}

/// What the load was told, so it can be checked.
#[derive(Default, Clone)]
struct Acked {
    /// Inbound changes answered 200 (external ids on CON).
    inbound: Vec<String>,
    /// Local records created through the API (201): their names, to find them at the peer.
    local: Vec<String>,
    /// The same, with their ids, for deletes to pick from.
    local_ids: Vec<(i64, String)>,
    /// Names of local records whose delete was sent (answered or not).
    delete_tried: HashSet<String>,
    /// Local records whose delete was answered 2xx.
    deleted: Vec<(i64, String)>,
}

fn serve(env: &Env, crash: Option<&str>, log: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recsync"));
    cmd.args([
        "serve",
        "--config",
        "recsync.toml",
        "--listen",
        &format!("127.0.0.1:{}", env.port),
    ])
    .env(
        "RUST_LOG",
        std::env::var("CRASH_LOG").unwrap_or("warn,sqlx=error".into()),
    )
    .current_dir(env.dir.path())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(env.dir.path().join(log)).unwrap());
    if let Some(c) = crash {
        cmd.env("RECSYNC_CRASH_POINT", c);
    }
    cmd.spawn().unwrap()
}

async fn ready(env: &Env, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(r) = env.client.get(format!("{}/readyz", env.base)).send().await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server did not become ready");
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// One step of load of each kind, numbered `k` (unique across the whole test).
async fn load_step(env: &Env, k: usize, step: usize, acked: &Mutex<Acked>) {
    let c = &env.client;
    let base = &env.base;
    let inbound = async {
        for j in 0..3 {
            let id = format!("IN-{k}-{j}");
            let r = c
                .post(format!("{base}/sync/CON/create"))
                .header("api_key", KEY)
                .json(&json!({"unique_id": id, "name": format!("Inbound {id}")}))
                .send()
                .await;
            if let Ok(r) = r
                && r.status() == 200
            {
                acked.lock().unwrap().inbound.push(id);
            }
        }
    };
    let local = async {
        let name = format!("Local {k}");
        let r = c
            .post(format!("{base}/api/v1/models/contact/records"))
            .header("X-Api-Key", KEY)
            .json(&json!({"name": name, "email": format!("l{k}@example.com")}))
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 201
            && let Ok(body) = r.json::<Value>().await
        {
            let mut a = acked.lock().unwrap();
            a.local.push(name.clone());
            a.local_ids
                .push((body["id"].as_i64().expect("the record's id"), name));
        }
        // Every third step deletes the oldest local record not deleted yet.
        if k.is_multiple_of(3) {
            let victim = {
                let mut a = acked.lock().unwrap();
                let v = a
                    .local_ids
                    .iter()
                    .find(|(_, n)| !a.delete_tried.contains(n))
                    .cloned();
                if let Some((_, n)) = &v {
                    a.delete_tried.insert(n.clone());
                }
                v
            };
            if let Some((id, name)) = victim {
                let r = c
                    .delete(format!("{base}/api/v1/models/contact/records/{id}"))
                    .header("X-Api-Key", KEY)
                    .send()
                    .await;
                if let Ok(r) = r
                    && r.status().is_success()
                {
                    acked.lock().unwrap().deleted.push((id, name));
                }
            }
        }
    };
    let pull = async {
        for j in 0..3 {
            env.peer
                .upsert(
                    "pull",
                    Some(format!("P-{k}-{j}")),
                    obj(json!({"name": format!("Pulled {k} {j}")})),
                )
                .await;
        }
        let _ = c
            .post(format!("{base}/api/v1/syncs/PULL/run"))
            .header("X-Api-Key", KEY)
            .send()
            .await;
    };
    let dropbox = async {
        let _ = env.fake.put(
            &format!("/Mirror/d{}/f{k}.txt", k % 4),
            format!("{k}").as_bytes(),
        );
        if k.is_multiple_of(5) {
            let _ = env.fake.rm(&format!("/Mirror/d{}/f{}.txt", k % 4, k - 4));
        }
        env.fake.notify().await;
    };
    tokio::join!(inbound, local, pull, dropbox);
    // Every 30 steps (about half a second), longer than the watcher's 300 ms debounce.
    if step % 30 == 1 {
        // A hot reload: the same mapping with a changed comment.
        std::fs::write(
            env.dir.path().join("mappings/test.toml"),
            format!("{}\n# edit {k}\n", env.mapping),
        )
        .unwrap();
    }
}

/// Checks that hold right after any kill.
async fn check_after_kill(env: &Env, acked: &Acked, confirmed_before: usize) -> usize {
    let store = &env.store;
    // Every acknowledged inbound change is there, once.
    for id in &acked.inbound {
        assert!(
            store.link_by_external("CON", id).await.unwrap().is_some(),
            "acknowledged {id} lost"
        );
    }
    // Every acknowledged local delete holds.
    for (id, name) in &acked.deleted {
        assert!(
            store
                .get_record("contact", *id)
                .await
                .unwrap()
                .is_none_or(|r| r.deleted),
            "the acknowledged delete of {name} (record {id}) was lost"
        );
    }
    // No pulled record was confirmed without being applied.
    let confirms = env.peer.calls("pull", "confirm");
    for body in &confirms[confirmed_before.min(confirms.len())..] {
        for item in body["content"].as_array().unwrap() {
            if item["status"] == "success" {
                let id = item["external_id"].as_str().unwrap();
                assert!(
                    store.link_by_external("PULL", id).await.unwrap().is_some(),
                    "{id} confirmed but not applied"
                );
            }
        }
    }
    confirms.len()
}

fn creates_by_external(rows: &[recsync::store::Change]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in rows.iter().filter(|r| {
        r.action == "create" && r.direction == "external_to_local" && r.status == "success"
    }) {
        *m.entry(r.external_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_at_randomized_points_nothing_acknowledged_is_lost_or_doubled() {
    let db = common::TestDb::new().await;
    let iterations: usize = std::env::var("RECSYNC_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if db.is_postgres() { 30 } else { 200 });
    let seed: u64 = std::env::var("RECSYNC_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash matrix: {iterations} kill points, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let (peer_url, peer_state) = common::spawn_peer();
    let fake = FakeDropbox::bind(FakeOptions::default()).unwrap();
    let fake_url = fake.url();
    let fake_state = fake.state.clone();
    tokio::spawn(fake.run());
    fake_state.mkdir("/Mirror").unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let mapping = format!("{MAPPING}\n{DROPBOX}")
        .replace("@PEER@", &peer_url)
        .replace("@DBX@", &fake_url);
    std::fs::write(dir.path().join("mappings/test.toml"), &mapping).unwrap();
    std::fs::write(
        dir.path().join("recsync.toml"),
        format!(
            "database_url = \"{}\"\nclaim_timeout = \"1s\"\noutbox_backoff = \"100ms\"\nshutdown_timeout = \"5s\"\n[[api_keys]]\nname = \"ops\"\nkey = \"{KEY}\"\nscopes = [\"admin\"]\n",
            db.url
        ),
    )
    .unwrap();
    let port = common::free_port();
    let store = db.store().await;
    let env = Env {
        base: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        peer: peer_state.clone(),
        fake: fake_state.clone(),
        store,
        mapping,
        dir,
    };
    fake_state.set_webhook(Some(format!("{}/webhooks/dropbox/box", env.base)));

    let acked = Mutex::new(Acked::default());
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    let mut tried: BTreeMap<String, usize> = BTreeMap::new();
    let mut external_kills = 0;
    let mut confirmed = 0;
    let mut k = 0;
    // Each block of POINTS.len() iterations tries every point once, in a
    // shuffled order, so every point is armed whenever iterations >= 6.
    let mut order: Vec<&str> = Vec::new();
    for i in 0..iterations {
        if order.is_empty() {
            order = POINTS.to_vec();
            order.shuffle(&mut rng);
        }
        let point = order.pop().unwrap();
        let n = if point == "reload.before_swap" {
            1
        } else {
            rng.random_range(1..=4)
        };
        let crash = format!("{point}:{n}");
        *tried.entry(point.to_string()).or_default() += 1;
        let log = format!("serve-{i}.log");
        let mut child = serve(&env, Some(&crash), &log);
        let started = Instant::now();
        if ready(&env, &mut child).await {
            // Load until the point fires, or 4 s (then an external SIGKILL).
            let mut step = 0;
            let load_started = Instant::now();
            while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(4)
            {
                k += 1;
                step += 1;
                load_step(&env, k, step, &acked).await;
            }
            if std::env::var("CRASH_DEBUG").is_ok() {
                println!(
                    "{crash}: {step} steps in {:?} (ready after {:?})",
                    load_started.elapsed(),
                    load_started - started
                );
            }
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            external_kills += 1;
            if std::env::var("CRASH_DEBUG").is_ok() {
                let t = std::fs::read_to_string(env.dir.path().join(&log)).unwrap_or_default();
                println!(
                    "--- {crash} not reached; log:\n{}",
                    t.lines().rev().take(15).collect::<Vec<_>>().join("\n")
                );
            }
        }
        child.wait().unwrap();
        let text = std::fs::read_to_string(env.dir.path().join(&log)).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("CRASH POINT")) {
            let name = line.split_whitespace().nth(2).unwrap_or("?").to_string();
            *fired.entry(name).or_default() += 1;
        }
        assert!(
            !text.contains("panicked"),
            "iteration {i} ({crash}) panicked:\n{text}"
        );
        let a = acked.lock().unwrap().clone();
        confirmed = check_after_kill(&env, &a, confirmed).await;
    }
    println!(
        "crash points armed: {tried:?}; fired: {fired:?}; killed from outside after 4 s: {external_kills}"
    );
    let total_fired: usize = fired.values().sum();
    assert!(
        total_fired + external_kills == iterations,
        "{total_fired} + {external_kills} != {iterations}"
    );
    // Every kind of point was reached at least once.
    for p in POINTS {
        assert!(
            fired.get(p).copied().unwrap_or(0) > 0 || iterations < 30,
            "{p} never fired: {fired:?}"
        );
    }

    // A clean instance brings everything to rest.
    let mut child = serve(&env, None, "final.log");
    assert!(ready(&env, &mut child).await);
    let store = &env.store;
    // Stale claims of killed runs expire (claim_timeout = 1 s); then the pulls and the mirror
    // catch up.
    common::eventually(120, "the pull queue to empty", || async {
        run_to_end(&env, "PULL").await?;
        (env.peer.pending("pull") == 0).then_some(())
    })
    .await;
    // Two successful BOX runs in a row: the second finds nothing new.
    for _ in 0..2 {
        let run = common::eventually(60, "a BOX run", || run_to_end(&env, "BOX")).await;
        assert_eq!(run.status, "success", "{run:?}");
    }
    let (local, remote) = (docs(store).await, mirror(&env.fake));
    let missing: Vec<_> = remote
        .iter()
        .filter(|(p, id)| local.get(*p) != Some(id))
        .collect();
    let extra: Vec<_> = local
        .iter()
        .filter(|(p, id)| remote.get(*p) != Some(id))
        .collect();
    if !(missing.is_empty() && extra.is_empty()) {
        // What the BOX sync did, to tell a lost delete from one held or failed.
        let holds = store.holds(None, Some("BOX"), 20).await.unwrap();
        let changes = store
            .changes(&recsync::store::ChangeFilter {
                sync: Some("BOX".into()),
                limit: 30,
                ..Default::default()
            })
            .await
            .unwrap();
        let rows: Vec<String> = changes
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {:?} {}",
                    c.id, c.action, c.status, c.external_id, c.error_message
                )
            })
            .collect();
        // Every row of the entries that differ, and every line of every process's log that
        // names them (the kill each process met is the first line of its log).
        let ids: Vec<&String> = missing.iter().chain(&extra).map(|(_, id)| *id).collect();
        let mut history = Vec::new();
        for id in &ids {
            for c in store
                .changes(&recsync::store::ChangeFilter {
                    external_id: Some((*id).clone()),
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
            {
                history.push(format!(
                    "{} {} {} {} {} run {:?} {} {}",
                    c.id, c.sync, c.action, c.status, id, c.run_id, c.actor, c.error_message
                ));
            }
        }
        let mut lines = Vec::new();
        let mut logs: Vec<_> = std::fs::read_dir(env.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for path in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let first = text.lines().next().unwrap_or_default().to_string();
            for l in text
                .lines()
                .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
            {
                lines.push(format!("{name} ({first}): {l}"));
            }
        }
        panic!(
            "the mirror differs: missing or different locally {missing:?}; extra locally {extra:?}\nBOX holds: {holds:?}\nBOX's newest rows:\n{}\nrows of those entries:\n{}\nlog lines naming them:\n{}",
            rows.join("\n"),
            history.join("\n"),
            lines.join("\n")
        );
    }
    common::eventually(120, "the outbox to settle", || async {
        let stats = store.outbox_stats().await.unwrap();
        (!stats
            .iter()
            .any(|(_, s, n, _)| (s == "pending" || s == "inflight") && *n > 0))
        .then_some(stats)
    })
    .await;
    let stats = store.outbox_stats().await.unwrap();
    assert!(
        !stats.iter().any(|(_, s, n, _)| s == "dead" && *n > 0),
        "dead letters: {stats:?}"
    );

    let acked = acked.lock().unwrap().clone();
    // Every row, page by page (newest first, `before` the last id seen).
    let mut rows = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .changes(&ChangeFilter {
                before,
                action: Some("create".into()),
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        rows.extend(page);
    }
    // Inbound: every acknowledged change present, each external id created once.
    let con: Vec<_> = rows.iter().filter(|r| r.sync == "CON").cloned().collect();
    let creates = creates_by_external(&con);
    for id in &acked.inbound {
        assert!(
            store.link_by_external("CON", id).await.unwrap().is_some(),
            "{id} lost"
        );
    }
    for (id, n) in &creates {
        assert_eq!(*n, 1, "{id} created {n} times");
    }
    // Pulled: every peer record arrived, once.
    let pull: Vec<_> = rows.iter().filter(|r| r.sync == "PULL").cloned().collect();
    let pulled = creates_by_external(&pull);
    for id in env.peer.records("pull").keys() {
        assert!(
            store.link_by_external("PULL", id).await.unwrap().is_some(),
            "{id} never pulled"
        );
        assert_eq!(
            pulled.get(id).copied().unwrap_or(0),
            1,
            "{id} pulled {:?} times",
            pulled.get(id)
        );
    }
    // Outbox: every acknowledged local record reached the peer, with no duplicate effect.
    let crm = env.peer.records("crm");
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for r in crm.values() {
        *by_name
            .entry(
                r.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
            .or_default() += 1;
    }
    for name in acked
        .local
        .iter()
        .filter(|n| !acked.delete_tried.contains(*n))
    {
        assert_eq!(
            by_name.get(name).copied().unwrap_or(0),
            1,
            "{name} at the peer"
        );
    }
    // Every acknowledged local delete reached the peer too.
    for (id, name) in &acked.deleted {
        assert_eq!(
            by_name.get(name).copied().unwrap_or(0),
            0,
            "{name} (record {id}) deleted locally but still at the peer"
        );
    }
    // No run is left running; links are one per external id (the unique index) and point at
    // live records.
    let runs = store.runs(None, None, 100_000).await.unwrap();
    assert!(
        runs.iter()
            .all(|r| r.finished_at.is_some() || r.status != "running" || {
                // A run of the clean instance may still be going.
                r.instance
                    .as_deref()
                    .is_some_and(|i| i == format!("recsync-{}", child.id()))
            }),
        "a run is stuck: {:?}",
        runs.iter().find(|r| r.finished_at.is_none())
    );
    let mut seen = HashSet::new();
    for id in &acked.inbound {
        let l = store.link_by_external("CON", id).await.unwrap().unwrap();
        assert!(
            seen.insert(l.local_id),
            "two external ids share record {}",
            l.local_id
        );
        assert!(
            store
                .get_record("contact", l.local_id)
                .await
                .unwrap()
                .is_some()
        );
    }
    println!(
        "final: {} inbound acknowledged, {} local records delivered, {} of them deleted, {} pulled, {} Dropbox entries",
        acked.inbound.len(),
        acked.local.len(),
        acked.deleted.len(),
        env.peer.records("pull").len(),
        mirror(&env.fake).len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let store = env.store.clone();
    db.cleanup(store).await;
}

/// Starts a run of `code` and waits for its end; `None` when one is already going (or a stale
/// claim has not expired yet).
async fn run_to_end(env: &Env, code: &str) -> Option<recsync::store::Run> {
    let r = env
        .client
        .post(format!("{}/api/v1/syncs/{code}/run", env.base))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .ok()?;
    if r.status() != 202 {
        return None;
    }
    let id = r.json::<Value>().await.ok()?["run_id"].as_i64()?;
    Some(
        common::eventually(30, "the run to end", || async {
            env.store
                .runs(Some(code), None, 50)
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.id == id && r.finished_at.is_some())
        })
        .await,
    )
}

async fn docs(store: &Store) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = store.records_after("doc", after, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in page.into_iter().filter(|r| !r.deleted) {
            let path = r.values["path"].as_str().unwrap_or_default().to_string();
            let id = r.values["dbx_id"].as_str().unwrap_or_default().to_string();
            assert!(
                out.insert(path.clone(), id).is_none(),
                "two records for {path}"
            );
        }
    }
    out
}

fn mirror(fake: &FakeState) -> BTreeMap<String, String> {
    fake.entries()
        .into_iter()
        .filter(|(p, _)| p.to_lowercase().starts_with("/mirror/"))
        .map(|(p, (id, _, _))| (p, id))
        .collect()
}
