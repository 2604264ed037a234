//! Secret masking for everything recsync shows or keeps about a change: the change-control
//! log's values and error messages, API output and the CLI. Two kinds of secret: values of
//! fields declared `secret = true` (masked by key, under their local and external names), and
//! secret strings of the configuration (credentials, values read from the environment),
//! masked wherever they occur inside a string.

use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashSet;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Secrets shorter than this are not searched for inside text (too many false hits).
const MIN_SECRET_LEN: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct Masker {
    fields: HashSet<String>,
    values: Vec<String>,
}

impl Masker {
    pub fn new(
        fields: impl IntoIterator<Item = String>,
        values: impl IntoIterator<Item = String>,
    ) -> Masker {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_SECRET_LEN)
            .collect();
        // Longest first, so a secret that contains another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Masker {
            fields: fields.into_iter().collect(),
            values,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.values.is_empty()
    }

    /// Masks secret fields (by key, at any depth) and secret strings inside `v`.
    pub fn mask_value(&self, v: &mut Value) {
        if self.is_empty() {
            return;
        }
        match v {
            Value::Object(m) => {
                for (k, child) in m.iter_mut() {
                    if self.fields.contains(k) && !child.is_null() {
                        *child = Value::String(MASK.into());
                    } else {
                        self.mask_value(child);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.mask_value(i)),
            Value::String(s) => {
                if let Cow::Owned(masked) = self.mask_text(s) {
                    *s = masked;
                }
            }
            _ => {}
        }
    }

    /// Masks the parts of a change-control row: its two value maps and its texts.
    pub fn mask_change_parts(&self, values: [&mut Value; 3], texts: [&mut String; 2]) {
        if self.is_empty() {
            return;
        }
        for v in values {
            self.mask_value(v);
        }
        for t in texts {
            if let Cow::Owned(masked) = self.mask_text(t) {
                *t = masked;
            }
        }
    }

    /// `text` with every secret string replaced.
    pub fn mask_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.values {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_masked_by_key_and_secrets_inside_text() {
        let m = Masker::new(
            ["password".to_string(), "pin".to_string()],
            ["s3cr3t-token".to_string(), "abc".to_string()],
        );
        let mut v = json!({
            "name": "Ann",
            "password": "hunter2",
            "pin": null,
            "nested": [{"pin": 1234}],
            "note": "called https://x/?t=s3cr3t-token twice; abc stays",
        });
        m.mask_value(&mut v);
        assert_eq!(
            v,
            json!({
                "name": "Ann",
                "password": "***",
                "pin": null,
                "nested": [{"pin": "***"}],
                "note": "called https://x/?t=*** twice; abc stays",
            })
        );
        assert_eq!(m.mask_text("no secrets"), Cow::Borrowed("no secrets"));
    }
}
