-- recsync store, PostgreSQL. Timestamps are timestamptz; JSON is jsonb.

CREATE TABLE records (
    id          BIGSERIAL PRIMARY KEY,
    model       TEXT    NOT NULL,
    vals        JSONB   NOT NULL DEFAULT '{}',
    version     BIGINT NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ    NOT NULL,
    updated_at  TIMESTAMPTZ    NOT NULL,
    deleted_at  TIMESTAMPTZ
);
CREATE INDEX records_model_id ON records (model, id);

CREATE TABLE links (
    sync           TEXT    NOT NULL,
    local_id       BIGINT NOT NULL,
    external_id    TEXT,
    base           JSONB   NOT NULL DEFAULT '{}',
    synced_version BIGINT NOT NULL DEFAULT 0,
    external_hash  TEXT,
    updated_at     TIMESTAMPTZ    NOT NULL,
    PRIMARY KEY (sync, local_id)
);
CREATE UNIQUE INDEX links_sync_external ON links (sync, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    sync            TEXT    NOT NULL,
    local_id        BIGINT NOT NULL,
    action          TEXT    NOT NULL,
    payload         JSONB   NOT NULL DEFAULT '{}',
    status          TEXT    NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ    NOT NULL,
    last_error      TEXT,
    claimed_by      TEXT,
    claimed_until   TIMESTAMPTZ,
    created_at      TIMESTAMPTZ    NOT NULL,
    updated_at      TIMESTAMPTZ    NOT NULL
);
CREATE INDEX outbox_due ON outbox (status, id);
CREATE INDEX outbox_record ON outbox (sync, local_id, id);

CREATE TABLE change_log (
    id                 BIGSERIAL PRIMARY KEY,
    sync               TEXT    NOT NULL,
    direction          TEXT    NOT NULL,
    action             TEXT    NOT NULL,
    external_id        TEXT,
    local_id           BIGINT,
    name               TEXT    NOT NULL,
    title              TEXT    NOT NULL DEFAULT '',
    origin_values      JSONB   NOT NULL DEFAULT '{}',
    destination_values JSONB   NOT NULL DEFAULT '{}',
    modified_at        TIMESTAMPTZ,
    synced_at          TIMESTAMPTZ    NOT NULL,
    status             TEXT    NOT NULL,
    error_message      TEXT    NOT NULL DEFAULT '',
    run_id             BIGINT,
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
    next_run_at   TIMESTAMPTZ,
    schedule      TEXT,
    running_run   BIGINT,
    running_by    TEXT,
    running_since TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE runs (
    id          BIGSERIAL PRIMARY KEY,
    sync        TEXT    NOT NULL,
    trigger     TEXT    NOT NULL,
    started_at  TIMESTAMPTZ    NOT NULL,
    finished_at TIMESTAMPTZ,
    status      TEXT    NOT NULL,
    error       TEXT,
    instance    TEXT,
    pulled      BIGINT NOT NULL DEFAULT 0,
    created     BIGINT NOT NULL DEFAULT 0,
    updated     BIGINT NOT NULL DEFAULT 0,
    deleted     BIGINT NOT NULL DEFAULT 0,
    unlinked    BIGINT NOT NULL DEFAULT 0,
    skipped     BIGINT NOT NULL DEFAULT 0,
    failed      BIGINT NOT NULL DEFAULT 0,
    conflicts   BIGINT NOT NULL DEFAULT 0,
    pushed      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runs_sync ON runs (sync, id);

CREATE TABLE idempotency_keys (
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    status_code BIGINT NOT NULL,
    body        TEXT    NOT NULL,
    created_at  TIMESTAMPTZ    NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_created ON idempotency_keys (created_at);
