//! Diagnostics rendered like rustc, over the loaded sources: a title, the file, line and
//! column, and a caret under the offending text.

use super::diag::{Diagnostic, Diagnostics, Span};
use super::source::Sources;
use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

impl Diagnostics {
    /// Renders every diagnostic, plain text, separated by blank lines, with a summary line.
    pub fn render(&self, sources: &Sources) -> String {
        let mut out = String::new();
        for d in &self.items {
            out.push_str(&self.mask(&render_one(d, sources)));
            out.push_str("\n\n");
        }
        let n = self.items.len();
        out.push_str(&format!(
            "error: configuration has {n} error{}",
            if n == 1 { "" } else { "s" }
        ));
        out
    }

    /// Just the titles with `file:line:col`, one per line (for logs and the API).
    pub fn summary(&self, sources: &Sources) -> Vec<String> {
        self.items
            .iter()
            .map(|d| {
                if d.span.is_nowhere() {
                    return self.mask(&d.message);
                }
                let (path, line, col) = position(sources, &d.span);
                self.mask(&format!("{path}:{line}:{col}: {}", d.message))
            })
            .collect()
    }
}

/// `(path, line, column)` of a span's start, 1-based, columns in characters.
pub fn position(sources: &Sources, span: &Span) -> (String, usize, usize) {
    let file = &sources.files[span.file];
    let start = span.range.start.min(file.text.len());
    let before = &file.text[..start];
    let line = before.matches('\n').count() + 1;
    let so_far = before.rsplit('\n').next().unwrap_or("").chars().count();
    // A position at the end of a line (a `]` or `}` expected there) is shown, by the
    // rendering, under the line's last character: the summary names that column too.
    let at_end = matches!(file.text.as_bytes().get(start), None | Some(b'\n' | b'\r'));
    let col = if at_end && so_far > 0 {
        so_far
    } else {
        so_far + 1
    };
    (file.path.clone(), line, col)
}

fn render_one<'a>(d: &'a Diagnostic, sources: &'a Sources) -> String {
    if d.span.is_nowhere() {
        let mut group = Group::with_title(Level::ERROR.primary_title(d.message.as_str()));
        if let Some(help) = &d.help {
            group = group.element(Level::HELP.message(help.as_str()));
        }
        return Renderer::plain().render(&[group]).to_string();
    }
    let snippet = |span: &Span,
                   label: &'a str,
                   primary: bool|
     -> Snippet<'a, annotate_snippets::Annotation<'a>> {
        let file = &sources.files[span.file];
        let kind = if primary {
            AnnotationKind::Primary
        } else {
            AnnotationKind::Context
        };
        let mut range = span.range.clone();
        // Point at least one character, so the caret is visible at the end of a file.
        if range.is_empty() {
            let text = file.text.as_str();
            let at = range.start.min(text.len());
            match text[at..].chars().next() {
                Some(c) if c != '\n' => range = at..at + c.len_utf8(),
                _ => {
                    if let Some((i, _)) = text[..at].char_indices().next_back() {
                        range = i..at;
                    }
                }
            }
        }
        Snippet::source(file.text.as_str())
            .path(file.path.as_str())
            .fold(true)
            .annotation(kind.span(range).label(label))
    };
    let mut group = Level::ERROR
        .primary_title(d.message.as_str())
        .element(snippet(&d.span, &d.label, true));
    for (span, label) in &d.related {
        group = group.element(snippet(span, label, false));
    }
    if let Some(help) = &d.help {
        group = group.element(Level::HELP.message(help.as_str()));
    }
    let report: Vec<Group<'_>> = vec![group];
    Renderer::plain().render(&report).to_string()
}
