-- Links belong to the binding (local model, external model, web service), shared by every sync
-- of that binding, instead of to one sync. The column keeps its rows: a row written by an earlier
-- release still holds its sync's code there, and the engine merges such rows into their
-- binding's key at start-up, once it knows which binding each sync belongs to (sync_bindings).
ALTER TABLE links RENAME COLUMN sync TO binding;
DROP INDEX links_sync_external;
CREATE UNIQUE INDEX links_binding_external ON links (binding, external_id) WHERE external_id IS NOT NULL;
-- The syncs of the binding whose domain the record left: they no longer carry it, while the
-- binding keeps its identity (a JSON array of sync codes).
ALTER TABLE links ADD COLUMN left_syncs JSONB NOT NULL DEFAULT '[]';

-- Which binding each configured sync belongs to, written by the engine from the loaded
-- configuration, so that readers (the CLI, tests) can find a sync's links by its code.
CREATE TABLE sync_bindings (
    sync       TEXT PRIMARY KEY,
    binding    TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- An Idempotency-Key answers only the request it was first used for: the fingerprint of that
-- request (method, path and body) is kept with the answer.
ALTER TABLE idempotency_keys ADD COLUMN fingerprint TEXT;

-- Live recsync processes: each renews its row every few seconds, so the in-flight deliveries
-- of one that stopped renewing pass to a live one within seconds, not after the lease.
CREATE TABLE instances (
    name         TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
