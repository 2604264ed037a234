-- recsync store, SQLite. Timestamps are RFC 3339 text in UTC; JSON is text.

CREATE TABLE records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    model       TEXT    NOT NULL,
    vals        TEXT    NOT NULL DEFAULT '{}',
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    deleted_at  TEXT
);
CREATE INDEX records_model_id ON records (model, id);

CREATE TABLE links (
    sync           TEXT    NOT NULL,
    local_id       INTEGER NOT NULL,
    external_id    TEXT,
    base           TEXT    NOT NULL DEFAULT '{}',
    synced_version INTEGER NOT NULL DEFAULT 0,
    external_hash  TEXT,
    updated_at     TEXT    NOT NULL,
    PRIMARY KEY (sync, local_id)
);
CREATE UNIQUE INDEX links_sync_external ON links (sync, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    sync            TEXT    NOT NULL,
    local_id        INTEGER NOT NULL,
    action          TEXT    NOT NULL,
    payload         TEXT    NOT NULL DEFAULT '{}',
    status          TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    last_error      TEXT,
    claimed_by      TEXT,
    claimed_until   TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);
CREATE INDEX outbox_due ON outbox (status, id);
CREATE INDEX outbox_record ON outbox (sync, local_id, id);

CREATE TABLE change_log (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    sync               TEXT    NOT NULL,
    direction          TEXT    NOT NULL,
    action             TEXT    NOT NULL,
    external_id        TEXT,
    local_id           INTEGER,
    name               TEXT    NOT NULL,
    title              TEXT    NOT NULL DEFAULT '',
    origin_values      TEXT    NOT NULL DEFAULT '{}',
    destination_values TEXT    NOT NULL DEFAULT '{}',
    modified_at        TEXT,
    synced_at          TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    error_message      TEXT    NOT NULL DEFAULT '',
    run_id             INTEGER,
    actor              TEXT    NOT NULL
);
CREATE INDEX change_log_sync ON change_log (sync, id);
CREATE INDEX change_log_status ON change_log (status, id);
CREATE INDEX change_log_action ON change_log (action, id);
CREATE INDEX change_log_direction ON change_log (direction, id);
CREATE INDEX change_log_external ON change_log (external_id, id);
CREATE INDEX change_log_local ON change_log (local_id, id);
CREATE INDEX change_log_synced_at ON change_log (synced_at, id);
CREATE INDEX change_log_run ON change_log (run_id);

CREATE TABLE sync_state (
    sync          TEXT PRIMARY KEY,
    cursor        TEXT,
    next_run_at   TEXT,
    schedule      TEXT,
    running_run   INTEGER,
    running_by    TEXT,
    running_since TEXT,
    updated_at    TEXT NOT NULL
);

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sync        TEXT    NOT NULL,
    trigger     TEXT    NOT NULL,
    started_at  TEXT    NOT NULL,
    finished_at TEXT,
    status      TEXT    NOT NULL,
    error       TEXT,
    instance    TEXT,
    pulled      INTEGER NOT NULL DEFAULT 0,
    created     INTEGER NOT NULL DEFAULT 0,
    updated     INTEGER NOT NULL DEFAULT 0,
    deleted     INTEGER NOT NULL DEFAULT 0,
    unlinked    INTEGER NOT NULL DEFAULT 0,
    skipped     INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    conflicts   INTEGER NOT NULL DEFAULT 0,
    pushed      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_sync ON runs (sync, id);

CREATE TABLE idempotency_keys (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    status_code INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_created ON idempotency_keys (created_at);
