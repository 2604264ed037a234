//! The compiled settings of a Dropbox account and of a mirrored Dropbox folder, with the path
//! patterns that name a folder's records.

use crate::connectors::transport::location;
use crate::domain::plan::{ConfigStr, ModelSettings, ServiceSettings};
use crate::domain::value::FieldType;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Fields every Dropbox entry has.
pub const DROPBOX_ENTRY_FIELDS: [(&str, FieldType); 10] = [
    ("id", FieldType::Char),
    ("tag", FieldType::Char),
    ("name", FieldType::Char),
    ("path", FieldType::Char),
    ("path_lower", FieldType::Char),
    ("parent", FieldType::Char),
    ("size", FieldType::Integer),
    ("rev", FieldType::Char),
    ("content_hash", FieldType::Char),
    ("server_modified", FieldType::Datetime),
];

/// A Dropbox folder mirrored as an external model.
#[derive(Debug, Clone)]
pub struct DropboxFolder {
    /// The mirrored folder, lower-case comparisons apply; `""` is the whole account.
    pub root: String,
    pub recursive: bool,
    pub pattern: Option<PathPattern>,
    /// How a value Dropbox cannot take as a name is written (`names`).
    pub names: Names,
}

/// `names`: what becomes of a record's value that Dropbox cannot take as a name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Names {
    /// The record is not written; its delivery fails naming the value (the default).
    #[default]
    Refuse,
    /// Written with look-alike characters, read back as it was (`names.rs`).
    Lookalike,
}

impl Names {
    pub fn parse(s: &str) -> Option<Names> {
        match s {
            "refuse" => Some(Names::Refuse),
            "lookalike" => Some(Names::Lookalike),
            _ => None,
        }
    }

    /// A value as the name written in Dropbox.
    pub fn encode(self, v: &str) -> std::borrow::Cow<'_, str> {
        match self {
            Names::Refuse => v.into(),
            Names::Lookalike => super::names::encode(v).into(),
        }
    }

    /// A name read in Dropbox as the value it stands for.
    pub fn decode(self, name: &str) -> String {
        match self {
            Names::Refuse => name.to_string(),
            Names::Lookalike => super::names::decode(name),
        }
    }
}

/// One piece of a path pattern segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternPart {
    Literal(String),
    Capture(String),
}

/// A path pattern such as `/{project}/{po_number}_{vendor}/{doc}.pdf`, relative to a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub text: String,
    pub segments: Vec<Vec<PatternPart>>,
}

/// Why a path pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a pattern must start with `/`")]
    NoLeadingSlash,
    #[error("segment {0} is empty")]
    EmptySegment(usize),
    #[error("unclosed `{{` in segment {0}")]
    Unclosed(usize),
    #[error("stray `}}` in segment {0}")]
    Stray(usize),
    #[error("captures `{0}` and `{1}` touch; put a literal between them")]
    Adjacent(String, String),
    #[error("capture name `{0}` is not an identifier")]
    BadName(String),
    #[error("capture `{0}` appears twice")]
    Duplicate(String),
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, PatternError> {
        let rest = text.strip_prefix('/').ok_or(PatternError::NoLeadingSlash)?;
        let mut segments = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        for (i, seg) in rest.split('/').enumerate() {
            let n = i + 1;
            if seg.is_empty() {
                return Err(PatternError::EmptySegment(n));
            }
            let mut parts = Vec::new();
            let mut lit = String::new();
            let mut chars = seg.chars();
            while let Some(c) = chars.next() {
                match c {
                    '{' => {
                        let mut name = String::new();
                        loop {
                            match chars.next() {
                                Some('}') => break,
                                Some(c) => name.push(c),
                                None => return Err(PatternError::Unclosed(n)),
                            }
                        }
                        if crate::domain::names::Ident::parse(&name).is_err() {
                            return Err(PatternError::BadName(name));
                        }
                        if seen.contains(&name) {
                            return Err(PatternError::Duplicate(name));
                        }
                        if !lit.is_empty() {
                            parts.push(PatternPart::Literal(std::mem::take(&mut lit)));
                        } else if let Some(PatternPart::Capture(prev)) = parts.last() {
                            return Err(PatternError::Adjacent(prev.clone(), name));
                        }
                        seen.push(name.clone());
                        parts.push(PatternPart::Capture(name));
                    }
                    '}' => return Err(PatternError::Stray(n)),
                    c => lit.push(c),
                }
            }
            if !lit.is_empty() {
                parts.push(PatternPart::Literal(lit));
            }
            segments.push(parts);
        }
        Ok(PathPattern {
            text: text.to_string(),
            segments,
        })
    }

    /// The capture names, in order.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().flatten().filter_map(|p| match p {
            PatternPart::Capture(c) => Some(c.as_str()),
            PatternPart::Literal(_) => None,
        })
    }

    /// Matches a path relative to the root (`/a/b`), returning the captures.
    pub fn matches(&self, rel_path: &str) -> Option<BTreeMap<String, String>> {
        let rest = rel_path.strip_prefix('/')?;
        let segs: Vec<&str> = rest.split('/').collect();
        if segs.len() != self.segments.len() {
            return None;
        }
        let mut out = BTreeMap::new();
        for (seg, parts) in segs.iter().zip(&self.segments) {
            match_segment(seg, parts, &mut out)?;
        }
        Some(out)
    }

    /// Builds a relative path from field values; `None` if a capture has no value or a value
    /// would break the path.
    pub fn build(&self, values: &BTreeMap<String, String>) -> Option<String> {
        let mut path = String::new();
        for parts in &self.segments {
            path.push('/');
            for p in parts {
                match p {
                    PatternPart::Literal(l) => path.push_str(l),
                    PatternPart::Capture(c) => {
                        let v = values.get(c)?;
                        if v.is_empty() || v.contains('/') {
                            return None;
                        }
                        path.push_str(v);
                    }
                }
            }
        }
        Some(path)
    }
}

/// Matches one segment; captures are non-empty, a capture followed by a literal takes the
/// shortest text that lets the rest match.
fn match_segment(
    seg: &str,
    parts: &[PatternPart],
    out: &mut BTreeMap<String, String>,
) -> Option<()> {
    match parts.split_first() {
        None => seg.is_empty().then_some(()),
        Some((PatternPart::Literal(l), rest)) => {
            match_segment(seg.strip_prefix(l.as_str())?, rest, out)
        }
        Some((PatternPart::Capture(name), rest)) => {
            if rest.is_empty() {
                if seg.is_empty() {
                    return None;
                }
                out.insert(name.clone(), seg.to_string());
                return Some(());
            }
            for (i, _) in seg.char_indices().skip(1) {
                let mut trial = out.clone();
                if match_segment(&seg[i..], rest, &mut trial).is_some() {
                    trial.insert(name.clone(), seg[..i].to_string());
                    *out = trial;
                    return Some(());
                }
            }
            None
        }
    }
}

/// A Dropbox account.
#[derive(Debug, Clone)]
pub struct DropboxService {
    pub app_key: SecretString,
    pub app_secret: SecretString,
    pub refresh_token: Option<SecretString>,
    pub access_token: Option<SecretString>,
    pub api_url: Option<ConfigStr>,
}

impl ModelSettings for DropboxFolder {}

impl ServiceSettings for DropboxService {
    fn secrets(&self) -> Vec<String> {
        let mut values = vec![
            self.app_key.expose_secret().to_string(),
            self.app_secret.expose_secret().to_string(),
        ];
        for t in [&self.refresh_token, &self.access_token]
            .into_iter()
            .flatten()
        {
            values.push(t.expose_secret().to_string());
        }
        values
    }

    fn shown(&self) -> Map<String, Value> {
        let api_url = self
            .api_url
            .as_ref()
            .map(location)
            .unwrap_or_else(|| "https://api.dropboxapi.com".into());
        let shown = json!({ "api_url": api_url });
        shown.as_object().cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_and_build() {
        let p = PathPattern::parse("/{project}/{po_number}_{vendor}/{doc}.pdf").unwrap();
        assert_eq!(
            p.captures().collect::<Vec<_>>(),
            vec!["project", "po_number", "vendor", "doc"]
        );
        let m = p.matches("/Apollo/PO-17_Acme_Ltd/invoice.v2.pdf").unwrap();
        assert_eq!(m["project"], "Apollo");
        assert_eq!(m["po_number"], "PO-17");
        assert_eq!(m["vendor"], "Acme_Ltd");
        assert_eq!(m["doc"], "invoice.v2");
        assert_eq!(
            p.build(&m).unwrap(),
            "/Apollo/PO-17_Acme_Ltd/invoice.v2.pdf"
        );
        assert!(p.matches("/Apollo/PO17/invoice.pdf").is_none());
        assert!(p.matches("/Apollo/PO_x/invoice.txt").is_none());
        assert!(p.matches("/Apollo/PO_x").is_none());
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(PathPattern::parse("{a}"), Err(PatternError::NoLeadingSlash));
        assert_eq!(
            PathPattern::parse("/{a}{b}"),
            Err(PatternError::Adjacent("a".into(), "b".into()))
        );
        assert_eq!(PathPattern::parse("/{a"), Err(PatternError::Unclosed(1)));
        assert_eq!(
            PathPattern::parse("/{a}//x"),
            Err(PatternError::EmptySegment(2))
        );
        assert_eq!(
            PathPattern::parse("/{a}/{a}"),
            Err(PatternError::Duplicate("a".into()))
        );
        assert_eq!(
            PathPattern::parse("/{a b}"),
            Err(PatternError::BadName("a b".into()))
        );
    }
}
