//! A mirrored file tree's entries (a Dropbox sync's folder): what the connector lists, the
//! store keeps and the tree endpoint shows.

use serde::Serialize;

/// One entry of a mirrored folder (file or folder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorEntry {
    pub id: String,
    /// `file` or `folder`.
    pub tag: String,
    pub name: String,
    pub path_lower: String,
    pub path_display: String,
    pub rev: Option<String>,
    pub size: Option<i64>,
    pub content_hash: Option<String>,
    /// As Dropbox writes it, `%Y-%m-%dT%H:%M:%SZ`.
    pub server_modified: Option<String>,
}
