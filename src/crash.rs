//! The test knobs, read here and nowhere else: crash points and the SQLite size cap.
//!
//! Crash points for the crash-matrix tests. With `RECSYNC_CRASH_POINT=<name>:<n>` in the
//! environment, the `n`-th time the code passes the point `name`, the process kills itself with
//! SIGKILL, there and then: no destructor runs, nothing is flushed, nothing is answered. Without
//! the variable (production), a point costs one relaxed load of a flag that is never set.
//!
//! The points: `inbound.before_commit` (a group of inbound changes is written but not
//! committed), `single.before_commit` (an inbound delete or a local edit is written but not
//! committed), `inbound.before_reply` (committed, not yet answered), `pull.before_confirm` (a
//! pulled page is applied, not yet confirmed), `outbox.before_record` (a delivery was made, its
//! result not yet recorded), `dropbox.before_mirror` (a Dropbox page's records are applied,
//! the mirror and cursor not yet stored), `sql.before_advance` (a page of a logical
//! replication slot is applied, the slot not yet advanced past it), `reload.before_swap` (a
//! new configuration is compiled, not yet in force).

use std::sync::OnceLock;

/// `RECSYNC_SQLITE_MAX_PAGE_COUNT`: a cap on a SQLite database's size in pages; past it, writes
/// fail as "full" (tests use it to rehearse a full disk).
pub fn sqlite_max_page_count() -> Option<u64> {
    std::env::var("RECSYNC_SQLITE_MAX_PAGE_COUNT")
        .ok()?
        .parse()
        .ok()
}
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("RECSYNC_CRASH_POINT").ok()?;
            let (name, n) = v.rsplit_once(':')?;
            Some(Armed {
                name: name.to_string(),
                at: n.parse().ok().filter(|n| *n > 0)?,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Passes the crash point `name`.
#[inline]
pub fn point(name: &str) {
    if let Some(a) = armed()
        && a.name == name
        && a.seen.fetch_add(1, Ordering::SeqCst) + 1 == a.at
    {
        eprintln!("CRASH POINT {name} reached; killing the process");
        kill_self();
    }
}

#[cfg(unix)]
fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid with SIGKILL; it does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    loop {
        std::thread::park();
    }
}

#[cfg(not(unix))]
fn kill_self() -> ! {
    std::process::abort()
}
