//! The mirror of a Dropbox sync's folder in memory during a listing loop (entries by id,
//! looked up by path), how a listed entry compares with it (create, update, rename, move or
//! unchanged), and the paths and tree built from it.

use super::spec::{DropboxFolder, Names};
use crate::domain::mirror::MirrorEntry;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// What a listed entry is, compared with the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Create,
    Update,
    Rename,
    Move,
    /// Exactly as mirrored (a write recsync made itself, or a replayed page).
    Same,
}

/// A sync's mirror in memory during a loop.
#[derive(Default)]
pub(super) struct Mirror {
    pub(super) by_id: HashMap<String, MirrorEntry>,
    pub(super) by_path: HashMap<String, String>,
}

impl Mirror {
    pub(super) fn load(entries: Vec<MirrorEntry>) -> Mirror {
        let mut m = Mirror::default();
        for e in entries {
            m.put(e);
        }
        m
    }

    pub(super) fn put(&mut self, e: MirrorEntry) {
        if let Some(old) = self.by_id.get(&e.id)
            && self.by_path.get(&old.path_lower) == Some(&e.id)
        {
            self.by_path.remove(&old.path_lower);
        }
        self.by_path.insert(e.path_lower.clone(), e.id.clone());
        self.by_id.insert(e.id.clone(), e);
    }

    /// Takes out the entry at `path` and, with `children`, everything below it.
    pub(super) fn take_under(&mut self, path: &str, children: bool) -> Vec<MirrorEntry> {
        let prefix = format!("{path}/");
        let ids: Vec<String> = self
            .by_id
            .values()
            .filter(|e| e.path_lower == path || (children && e.path_lower.starts_with(&prefix)))
            .map(|e| e.id.clone())
            .collect();
        ids.iter()
            .filter_map(|id| {
                let e = self.by_id.remove(id)?;
                if self.by_path.get(&e.path_lower) == Some(&e.id) {
                    self.by_path.remove(&e.path_lower);
                }
                Some(e)
            })
            .collect()
    }
}

pub(super) fn parent(path_lower: &str) -> &str {
    path_lower.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// The path of `display` relative to `root` (`/a/b`), if it lies strictly below the root.
pub(super) fn relative<'a>(root: &str, display: &'a str) -> Option<&'a str> {
    if root.is_empty() {
        return display.starts_with('/').then_some(display);
    }
    let head = display.get(..root.len())?;
    let rest = &display[root.len()..];
    (head.eq_ignore_ascii_case(root) || head.to_lowercase() == root.to_lowercase())
        .then_some(rest)
        .filter(|r| r.starts_with('/') && r.len() > 1)
}

/// The external values of the entry at `rel` (below the root), or `None` when the folder's
/// pattern does not take it: every Dropbox field plus the pattern's captures, the names read
/// as the values they stand for (`names`).
pub(super) fn external_values(
    folder: &DropboxFolder,
    e: &MirrorEntry,
    rel: &str,
) -> Option<Map<String, Value>> {
    let captures = match &folder.pattern {
        Some(p) => p
            .matches(rel)?
            .into_iter()
            .map(|(k, v)| (k, folder.names.decode(&v)))
            .collect(),
        None => BTreeMap::new(),
    };
    let mut values = entry_values(e, captures);
    if folder.pattern.is_none() {
        values.insert("name".into(), json!(folder.names.decode(&e.name)));
    }
    Some(values)
}

/// The external values of a mirrored entry: every Dropbox field plus the pattern's captures.
fn entry_values(e: &MirrorEntry, captures: BTreeMap<String, String>) -> Map<String, Value> {
    let mut v = Map::new();
    v.insert("id".into(), json!(e.id));
    v.insert("tag".into(), json!(e.tag));
    v.insert("name".into(), json!(e.name));
    v.insert("path".into(), json!(e.path_display));
    v.insert("path_lower".into(), json!(e.path_lower));
    let display_parent = e
        .path_display
        .rsplit_once('/')
        .map(|(p, _)| p)
        .unwrap_or("");
    v.insert("parent".into(), json!(display_parent));
    v.insert("size".into(), json!(e.size));
    v.insert("rev".into(), json!(e.rev));
    v.insert("content_hash".into(), json!(e.content_hash));
    v.insert("server_modified".into(), json!(e.server_modified));
    for (k, val) in captures {
        v.insert(k, Value::String(val));
    }
    v
}

/// The Dropbox path of a record: the root, then the pattern filled with the mapped values (or
/// the `name` field when there is no pattern).
pub(super) fn target_path(
    folder: &DropboxFolder,
    mapped: &Map<String, Value>,
) -> Result<String, String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let rel = match &folder.pattern {
        Some(p) => {
            let mut caps = BTreeMap::new();
            for c in p.captures() {
                match mapped.get(c).and_then(text) {
                    Some(v) => {
                        caps.insert(c.to_string(), segment(folder, c, &v)?);
                    }
                    None => {
                        return Err(format!(
                            "{c}: missing; the pattern {} needs it to build the Dropbox path",
                            p.text
                        ));
                    }
                }
            }
            p.build(&caps).ok_or("the pattern could not be filled")?
        }
        None => match mapped.get("name").and_then(text) {
            Some(n) => format!("/{}", segment(folder, "name", &n)?),
            None => {
                return Err(
                    "name: missing, and the external model has no pattern to name the entry".into(),
                );
            }
        },
    };
    Ok(format!("{}{rel}", folder.root))
}

/// The value of `field` as one name in a Dropbox path (`names`), or why it cannot be one.
fn segment(folder: &DropboxFolder, field: &str, v: &str) -> Result<String, String> {
    let name = folder.names.encode(v);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        let help = match folder.names {
            Names::Refuse => {
                "; `names = \"lookalike\"` on the external model writes such values with look-alike characters"
            }
            Names::Lookalike => "",
        };
        return Err(format!(
            "{field}: {v:?} cannot be a name in Dropbox (empty, `.`, `..` or containing `/`){help}"
        ));
    }
    Ok(name.into_owned())
}

/// The nested tree of a mirror: the root folder, then each entry under its parent.
pub fn build_tree(folder: &DropboxFolder, entries: Vec<MirrorEntry>) -> Value {
    let root_lower = folder.root.to_lowercase();
    let mut children: BTreeMap<String, Vec<MirrorEntry>> = BTreeMap::new();
    for e in entries {
        children
            .entry(parent(&e.path_lower).to_string())
            .or_default()
            .push(e);
    }
    fn node(
        e: Option<&MirrorEntry>,
        path: &str,
        name: &str,
        children: &mut BTreeMap<String, Vec<MirrorEntry>>,
    ) -> Value {
        let mut kids = children.remove(path).unwrap_or_default();
        kids.sort_by(|a, b| (a.tag != "folder", &a.name).cmp(&(b.tag != "folder", &b.name)));
        let tag = e.map(|e| e.tag.as_str()).unwrap_or("folder");
        let mut v = json!({
            "id": e.map(|e| e.id.clone()),
            "name": name,
            "tag": tag,
            "path": e.map(|e| e.path_display.clone()),
            "size": e.and_then(|e| e.size),
            "rev": e.and_then(|e| e.rev.clone()),
        });
        if tag == "folder" {
            v["children"] = Value::Array(
                kids.iter()
                    .map(|k| node(Some(k), &k.path_lower, &k.name, children))
                    .collect(),
            );
        }
        v
    }
    let name = folder.root.rsplit('/').next().unwrap_or("");
    let mut root = node(None, &root_lower, name, &mut children);
    root["path"] = json!(if folder.root.is_empty() {
        "/"
    } else {
        folder.root.as_str()
    });
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, path: &str, tag: &str) -> MirrorEntry {
        MirrorEntry {
            id: id.into(),
            tag: tag.into(),
            name: path.rsplit('/').next().unwrap().into(),
            path_lower: path.to_lowercase(),
            path_display: path.into(),
            rev: (tag == "file").then(|| "015f0000000a".into()),
            size: (tag == "file").then_some(3),
            content_hash: None,
            server_modified: None,
        }
    }

    #[test]
    fn relative_paths_are_strictly_below_the_root_whatever_the_case() {
        assert_eq!(relative("/DMS", "/dms/a/b"), Some("/a/b"));
        assert_eq!(relative("/DMS", "/DMS"), None);
        assert_eq!(relative("/DMS", "/DMSX/a"), None);
        assert_eq!(relative("", "/a"), Some("/a"));
    }

    #[test]
    fn the_tree_nests_entries_under_their_parents() {
        let folder = DropboxFolder {
            root: "/Root".into(),
            recursive: true,
            pattern: None,
            names: Names::Refuse,
        };
        let t = build_tree(
            &folder,
            vec![
                entry("id:1", "/Root/A", "folder"),
                entry("id:2", "/Root/A/x.txt", "file"),
                entry("id:3", "/Root/b.txt", "file"),
            ],
        );
        assert_eq!(t["name"], "Root");
        assert_eq!(t["children"][0]["id"], "id:1");
        assert_eq!(t["children"][0]["children"][0]["name"], "x.txt");
        assert_eq!(t["children"][0]["children"][0]["size"], 3);
        assert_eq!(t["children"][1]["name"], "b.txt");
        assert!(t["children"][1].get("children").is_none());
    }

    #[test]
    fn paths_are_built_from_the_pattern_and_refuse_traversal() {
        let folder = DropboxFolder {
            root: "/P".into(),
            recursive: true,
            pattern: Some(
                super::super::spec::PathPattern::parse("/{project}/{po}_{vendor}").unwrap(),
            ),
            names: Names::Refuse,
        };
        let m: Map<String, Value> =
            serde_json::from_value(json!({"project": "Alpha", "po": "PO-1", "vendor": "ACME"}))
                .unwrap();
        assert_eq!(target_path(&folder, &m).unwrap(), "/P/Alpha/PO-1_ACME");
        let bad: Map<String, Value> =
            serde_json::from_value(json!({"project": "..", "po": "1", "vendor": "v"})).unwrap();
        assert!(
            target_path(&folder, &bad)
                .unwrap_err()
                .starts_with("project:")
        );
        let missing: Map<String, Value> = serde_json::from_value(json!({"project": "A"})).unwrap();
        assert!(
            target_path(&folder, &missing)
                .unwrap_err()
                .contains("missing")
        );
    }
}
