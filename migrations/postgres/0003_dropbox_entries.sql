-- The mirror of each Dropbox sync's folder: every entry listed under its root, whether or not
-- it matches the sync's pattern (intermediate folders belong to the tree too). Keyed by the
-- Dropbox id, which survives renames and moves; looked up by path, because deleted entries
-- carry only a path.
CREATE TABLE dropbox_entries (
    sync            TEXT NOT NULL,
    id              TEXT NOT NULL,
    tag             TEXT NOT NULL,
    name            TEXT NOT NULL,
    path_lower      TEXT NOT NULL,
    path_display    TEXT NOT NULL,
    rev             TEXT,
    size            BIGINT,
    content_hash    TEXT,
    server_modified TEXT,
    PRIMARY KEY (sync, id)
);
CREATE INDEX dropbox_entries_path ON dropbox_entries (sync, path_lower);
