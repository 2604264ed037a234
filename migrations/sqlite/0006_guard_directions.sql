-- The delete guard on both sides and in real time.
-- direction: external_to_local (deletes the external side reported, to apply here) or
-- local_to_external (local deletes to send); a hold with no run_id collects the deletes of
-- real-time traffic (DELETE /sync, local deletes of real-time syncs) over the guard's hour.
ALTER TABLE holds ADD COLUMN direction TEXT NOT NULL DEFAULT 'external_to_local';

-- Real-time deletes applied or sent, per sync and direction, for the guard's hourly count;
-- rows older than an hour are removed as new ones come.
CREATE TABLE guard_deletes (
    sync       TEXT NOT NULL,
    direction  TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE INDEX guard_deletes_at ON guard_deletes (sync, direction, at);
