//! The helpers a kind's compile step reads its keys with (`use crate::config::kit::*`).

pub use super::diag::{Diagnostic, Diagnostics, Span};
pub use super::kinds::{CompiledModel, Declared, Identity, Kind, SyncCheck};
pub use super::mappings::{
    METHODS, cfg_str, check_url, compile_auth, compile_plain_fields, duration_of, enum_of,
    jsonpath_of, max_concurrency_of, secret, signing_of,
};
pub use super::reader::*;
pub use super::source::{Item, Key, Node, Table};
