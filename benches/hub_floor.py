"""What SQLite alone takes for the hub's writes of a pulled record, without recsync.

`cargo bench --bench sql` pulls a table into a hub on SQLite; each new record costs three rows
there (the record, its link and its change-control row, seven index entries between them). This
script writes exactly those rows, with the hub's own schema (the files of migrations/sqlite, in
order) and the connection settings the store uses (WAL, synchronous = NORMAL, no automatic
checkpoint, temporary tables in memory), through Python's sqlite3 module: statements prepared
once, every value made before the clock starts, one transaction of BEGIN IMMEDIATE per page of
1,000 records. What it measures is a ceiling for the pull on this machine: whatever recsync
does besides (reading PostgreSQL, mapping, deciding, JSON, masking) can only add to it.

    python3 benches/hub_floor.py [ROWS] [all|records|links|log] [INDEX,INDEX...]

ROWS defaults to 1,000,000; the second argument writes one table only; the third drops those
indexes first (to price them). The database is a temporary file. Writing one statement of 250
rows at a time instead, as the hub does, measured the same (34.8 µs a record against 31-38).
"""

import glob
import json
import os
import sqlite3
import sys
import tempfile
import time

rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
what = sys.argv[2] if len(sys.argv) > 2 else "all"
drop = [i for i in (sys.argv[3] if len(sys.argv) > 3 else "").split(",") if i]
PAGE = 1000

with tempfile.TemporaryDirectory() as d:
    db = sqlite3.connect(os.path.join(d, "hub.db"), isolation_level=None)
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "wal_autocheckpoint = 0", "temp_store = memory"):
        db.execute("PRAGMA " + pragma)
    migrations = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "migrations", "sqlite")
    for f in sorted(glob.glob(os.path.join(migrations, "*.sql"))):
        db.executescript(open(f).read())
    for index in drop:
        db.execute("DROP INDEX " + index)
    now = "2026-12-07T16:00:00.123456Z"
    # The values of the bench's table, as the hub stores them.
    vals = [
        json.dumps(
            {
                "name": "Customer %d" % g,
                "email": "c%d@example.com" % g,
                "balance": "%d.%02d" % (g % 100000 // 100, g % 100),
                "updated_at": "2026-01-01T00:%02d:%06.3fZ" % (g // 60000 % 60, g / 1000 % 60),
            }
        )
        for g in range(rows)
    ]
    records = [("customer", v, now, now) for v in vals]
    links = [("CUS|customers|legacy", g + 1, str(g), vals[g], 1, None, "[]", now) for g in range(rows)]
    log = [
        ("PULL", "external_to_local", "create", str(g), g + 1, "Customer %d" % g, "Customer",
         vals[g], vals[g], "{}", None, now, "success", "", 1, "cron")
        for g in range(rows)
    ]
    start = time.time()
    for page in range(0, rows, PAGE):
        end = min(page + PAGE, rows)
        db.execute("BEGIN IMMEDIATE")
        if what in ("all", "records"):
            db.executemany(
                "INSERT INTO records (model, vals, created_at, updated_at) VALUES (?, ?, ?, ?)",
                records[page:end],
            )
        if what in ("all", "links"):
            db.executemany(
                "INSERT INTO links (binding, local_id, external_id, base, synced_version, "
                "external_hash, left_syncs, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                links[page:end],
            )
        if what in ("all", "log"):
            db.executemany(
                "INSERT INTO change_log (sync, direction, action, external_id, local_id, name, "
                "title, origin_values, destination_values, before_values, modified_at, synced_at, "
                "status, error_message, run_id, actor) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                log[page:end],
            )
        db.execute("COMMIT")
    took = time.time() - start
    size = os.path.getsize(os.path.join(d, "hub.db")) + os.path.getsize(os.path.join(d, "hub.db-wal"))
    print(
        "hub floor (SQLite %s, %s): %d records in %.2f s: %.0f records/s, %.1f us a record, %.0f MiB written"
        % (sqlite3.sqlite_version, what, rows, took, rows / took, took / rows * 1e6, size / 2**20)
    )
