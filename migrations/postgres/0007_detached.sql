-- A discarded hold of local deletes leaves its links detached: the record is deleted here,
-- the external one stays, and the sync neither deletes it there nor imports it here again
-- until an operator relinks or resyncs it. Kept with the paused records (which the sync
-- already leaves alone), marked with the hold that was discarded.
ALTER TABLE paused_records ADD COLUMN detached_hold BIGINT;
