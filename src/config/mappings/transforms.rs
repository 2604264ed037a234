//! A field pair's expressions (`to_local`, `to_external`): compiled once, every name checked
//! against the models, each error placed at its line and column inside the TOML string.

use super::*;
use crate::domain::transform::{ExprError, ExprErrorKind, Transform, VARIABLES, filter_names};
use std::sync::Arc;

/// Which way an expression computes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    ToLocal,
    ToExternal,
}

impl Way {
    fn key(self) -> &'static str {
        match self {
            Way::ToLocal => "to_local",
            Way::ToExternal => "to_external",
        }
    }
}

/// The place of `range` (bytes of the decoded string) in the file: exact for a string
/// without escapes, else the whole string.
fn inside(s: &Str<'_>, range: Option<std::ops::Range<usize>>) -> Span {
    let Some(r) = range else {
        return s.span.clone();
    };
    let quote = match s.span.range.len().checked_sub(s.value.len()) {
        Some(2) => 1,
        Some(6) => 3,
        _ => return s.span.clone(),
    };
    let start = s.span.range.start + quote;
    Span::new(s.span.file, start + r.start..start + r.end.max(r.start + 1))
}

/// Compiles one expression of a pair. `has_value`: the pair names both fields, so `value` is
/// its source field's value.
pub(super) fn compile_expression(
    s: &Str<'_>,
    way: Way,
    has_value: bool,
    model: &Model,
    ext: &ExternalModel,
    kind: &dyn Kind,
    diags: &mut Diagnostics,
) -> Option<Arc<Transform>> {
    let compiled = match Transform::compile(s.value) {
        Ok(c) => c,
        Err(errors) => {
            report(s, way, errors, diags);
            return None;
        }
    };
    let before = diags.len();
    report(s, way, compiled.errors.clone(), diags);
    let (readable, unreadable) = match way {
        Way::ToLocal => ("external", "local"),
        Way::ToExternal => ("local", "external"),
    };
    if let Some(at) = &compiled.value_at
        && !has_value
    {
        diags.push(
            Diagnostic::error(
                format!(
                    "{} in `{}`: `value` is not defined here",
                    way.key(),
                    s.value
                ),
                inside(s, Some(at.clone())),
                "no source field",
            )
            .with_help(format!(
                "`value` is the paired field's value; a computed field reads `{readable}.<field>`"
            )),
        );
    }
    let local_names: Vec<&str> = model.fields.keys().map(String::as_str).collect();
    let ext_names: Vec<&str> = ext.fields.keys().map(String::as_str).collect();
    for n in &compiled.names {
        let span = inside(s, Some(n.range.clone()));
        if n.record == unreadable {
            diags.push(
                Diagnostic::error(
                    format!(
                        "{} in `{}`: `{unreadable}` cannot be read here",
                        way.key(),
                        s.value
                    ),
                    span,
                    "not available in this direction",
                )
                .with_help(format!(
                    "`{}` computes from the {readable} record: read `{readable}.<field>` or `value`",
                    way.key()
                )),
            );
            continue;
        }
        let known = match n.record {
            "local" => model.fields.contains_key(&n.name),
            // Some kinds' records are JSON documents read by path, their members undeclared.
            _ => kind.reads_any_member() || ext.fields.contains_key(&n.name),
        };
        if !known {
            let (what, owner, names) = if n.record == "local" {
                ("field", format!("model `{}`", model.name), &local_names)
            } else {
                (
                    "field",
                    format!("external model `{}`", ext.name),
                    &ext_names,
                )
            };
            diags.push(with_choices(
                Diagnostic::error(
                    format!(
                        "{} in `{}`: unknown {what} `{}` on {owner}",
                        way.key(),
                        s.value,
                        n.name
                    ),
                    span,
                    format!("not a field of {owner}"),
                ),
                &n.name,
                names,
            ));
        }
    }
    (diags.len() == before).then_some(compiled.transform)
}

fn report(s: &Str<'_>, way: Way, errors: Vec<ExprError>, diags: &mut Diagnostics) {
    for e in errors {
        let span = inside(s, e.range.clone());
        let d = Diagnostic::error(
            format!("{} in `{}`: {}", way.key(), s.value, e.message),
            span,
            match e.kind {
                ExprErrorKind::Syntax => "here",
                ExprErrorKind::Filter => "not a filter",
                _ => "not a name an expression can read",
            },
        );
        let d = match (e.kind, &e.name) {
            (ExprErrorKind::Filter, Some(n)) => with_choices(d, n, filter_names()),
            (ExprErrorKind::Variable, Some(n)) => with_choices(d, n, &VARIABLES),
            _ => d,
        };
        diags.push(d);
    }
}
