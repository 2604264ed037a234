-- A change that arrives for a paused record (a real-time call, a pulled page) is not applied,
-- and not lost either: the external values it brought are kept with the pause, merged over
-- any kept before (later values win), and applied when the record is resumed. `pending_delete`
-- keeps a delete the same way.
ALTER TABLE paused_records ADD COLUMN pending TEXT;
ALTER TABLE paused_records ADD COLUMN pending_external_id TEXT;
ALTER TABLE paused_records ADD COLUMN pending_delete BOOLEAN NOT NULL DEFAULT FALSE;
