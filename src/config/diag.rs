//! Diagnostics rendered like rustc: a title, the file, line and column, and a caret under the
//! offending text. All of a load's diagnostics are collected and shown together.

use std::ops::Range;

/// A byte range in one of the loaded files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub file: usize,
    pub range: Range<usize>,
}

impl Span {
    pub fn new(file: usize, range: Range<usize>) -> Self {
        Span { file, range }
    }

    /// For errors with no place in a file (environment variables, unreadable paths).
    pub fn nowhere() -> Self {
        Span {
            file: usize::MAX,
            range: 0..0,
        }
    }

    pub fn is_nowhere(&self) -> bool {
        self.file == usize::MAX
    }
}

/// One error, pointing at the offending text.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub message: String,
    pub span: Span,
    pub label: String,
    /// Other places involved, such as the first declaration of a duplicate.
    pub related: Vec<(Span, String)>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            span,
            label: label.into(),
            related: vec![],
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_related(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
    }
}

/// Every error of one load, plus the values read from the environment, which are masked
/// wherever a message might repeat them.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
    secrets: Vec<String>,
    /// Fields (model, field) whose declaration was already reported: a reference to one is
    /// not reported again as an unknown field, so one mistake gives one error.
    broken: std::collections::HashSet<(String, String)>,
}

impl Diagnostics {
    /// Notes a field whose declaration failed (its error is already pushed).
    pub fn mark_broken(&mut self, model: &str, field: &str) {
        self.broken.insert((model.to_string(), field.to_string()));
    }

    /// Was this field declared, though wrongly? Then references to it are not errors too.
    pub fn is_broken(&self, model: &str, field: &str) -> bool {
        self.broken
            .contains(&(model.to_string(), field.to_string()))
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    /// Remembers a value that came from the environment.
    pub fn add_secret(&mut self, value: &str) {
        if value.len() >= 3 && !self.secrets.iter().any(|s| s == value) {
            self.secrets.push(value.to_string());
        }
    }

    pub(super) fn mask(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), "[secret]"))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Sorts by file and position, so output follows the files.
    pub fn sort(&mut self) {
        self.items.sort_by(|a, b| {
            (a.span.file, a.span.range.start).cmp(&(b.span.file, b.span.range.start))
        });
    }
}
