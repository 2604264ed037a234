-- Deletes held by a sync's delete guard: a run (or an hour of real-time traffic) that would
-- delete more than the guard allows collects its deletes here instead of applying them, and an
-- operator approves (the listed deletes are applied, no others) or discards them.
-- status: collecting (a run still gathering its deletes) | held | approved | discarded | applied
-- (under the guard's limit: applied at the end of the run).
CREATE TABLE holds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sync        TEXT    NOT NULL,
    run_id      INTEGER,
    status      TEXT    NOT NULL,
    reason      TEXT    NOT NULL DEFAULT '',
    items       INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT    NOT NULL,
    decided_at  TEXT,
    decided_by  TEXT
);
CREATE INDEX holds_sync ON holds (sync, status);

CREATE TABLE hold_items (
    hold_id     INTEGER NOT NULL,
    external_id TEXT    NOT NULL,
    local_id    INTEGER,
    name        TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (hold_id, external_id)
);

-- The external ids a reconciliation has listed so far, so that what it did not see is found
-- in the store, not in memory; the rows of a run are removed when its reconciliation ends.
CREATE TABLE reconcile_seen (
    run_id      INTEGER NOT NULL,
    external_id TEXT    NOT NULL,
    PRIMARY KEY (run_id, external_id)
);

ALTER TABLE sync_state ADD COLUMN next_reconcile_at TEXT;

ALTER TABLE runs ADD COLUMN held      INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN missing   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN extra     INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN different INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN ambiguous INTEGER NOT NULL DEFAULT 0;

-- match_on: local records that several external records (or one external record with several
-- local candidates) matched ambiguously; a run's push does not create them on the external
-- side, where their match already is.
CREATE TABLE match_ambiguous (
    binding     TEXT    NOT NULL,
    local_id    INTEGER  NOT NULL,
    external_id TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    PRIMARY KEY (binding, local_id, external_id)
);

-- Records paused for one sync by an operator: neither sent by it nor overwritten by its pulls
-- (their incoming changes are logged `skipped`) until resumed.
CREATE TABLE paused_records (
    sync      TEXT    NOT NULL,
    local_id  INTEGER  NOT NULL,
    paused_at TEXT NOT NULL,
    paused_by TEXT    NOT NULL,
    PRIMARY KEY (sync, local_id)
);
