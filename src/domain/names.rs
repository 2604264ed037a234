//! Validated names: sync codes, model and field names. Built once, valid forever.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {0} characters")]
    TooLong(usize),
    #[error("may only contain {0}")]
    BadChar(&'static str),
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $allowed:expr, $first:expr, $rest:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks the text and builds the name.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                if s.is_empty() {
                    return Err(NameError::Empty);
                }
                if s.len() > $max {
                    return Err(NameError::TooLong($max));
                }
                let mut chars = s.chars();
                let first = chars.next().expect("not empty");
                let first_ok: fn(char) -> bool = $first;
                let rest_ok: fn(char) -> bool = $rest;
                if !first_ok(first) || !chars.all(rest_ok) {
                    return Err(NameError::BadChar($allowed));
                }
                Ok(Self(s.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// The code of a sync, as used in `/sync/<CODE>/...`: letters, digits, `_` and `-`.
    SyncCode,
    64,
    "ASCII letters, digits, `_` and `-`, starting with a letter",
    |c| c.is_ascii_alphabetic(),
    |c| c.is_ascii_alphanumeric() || c == '_' || c == '-'
);

name_type!(
    /// The name of a model, web service or field: an identifier usable in URLs and logs.
    Ident,
    64,
    "ASCII letters, digits, `_`, `.` and `-`, starting with a letter or `_`",
    |c| c.is_ascii_alphabetic() || c == '_',
    |c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'
);

/// Model names are identifiers.
pub type ModelName = Ident;
/// Field names are identifiers.
pub type FieldName = Ident;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_codes() {
        assert!(SyncCode::parse("CON").is_ok());
        assert!(SyncCode::parse("CON_2-b").is_ok());
        assert_eq!(SyncCode::parse(""), Err(NameError::Empty));
        assert!(SyncCode::parse("1CON").is_err());
        assert!(SyncCode::parse("CO N").is_err());
        assert!(SyncCode::parse("CON/x").is_err());
        assert_eq!(
            SyncCode::parse(&"A".repeat(65)),
            Err(NameError::TooLong(64))
        );
    }

    #[test]
    fn idents() {
        assert!(Ident::parse("res.partner").is_ok());
        assert!(Ident::parse("_x1").is_ok());
        assert!(Ident::parse("a b").is_err());
        assert!(Ident::parse("$.a").is_err());
    }
}
