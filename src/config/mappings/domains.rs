//! Domains: Odoo-style filters, type-checked against the local model.

use super::*;

pub(super) fn compile_domain(item: &Item, model: &Model, diags: &mut Diagnostics) -> Domain {
    let Node::Array(items) = &item.node else {
        diags.push(wrong_type("domain", item, "an array"));
        return Domain::All;
    };
    let before = diags.len();
    let mut tokens = Vec::new();
    let mut spans = Vec::new();
    let field_names: Vec<&str> = model
        .fields
        .keys()
        .map(String::as_str)
        .chain(["id"])
        .collect();
    for it in items {
        spans.push(it.span.clone());
        match &it.node {
            Node::Str { value, .. } => match value.as_str() {
                "&" => tokens.push(Token::And),
                "|" => tokens.push(Token::Or),
                "!" => tokens.push(Token::Not),
                other => diags.push(
                    Diagnostic::error(
                        format!("invalid domain element `{other}`"),
                        it.span.clone(),
                        "expected `&`, `|`, `!` or a condition",
                    )
                    .with_help("a condition is [field, operator, value]"),
                ),
            },
            Node::Array(parts) if parts.len() == 3 => {
                let Some(field) = as_str("domain field", &parts[0], diags) else {
                    continue;
                };
                let Some(op_s) = as_str("domain operator", &parts[1], diags) else {
                    continue;
                };
                let Some(ty) = model.field_type(field.value) else {
                    if diags.is_broken(&model.name, field.value) {
                        continue;
                    }
                    diags.push(with_choices(
                        Diagnostic::error(
                            format!("unknown field `{}` on model `{}`", field.value, model.name),
                            field.span.clone(),
                            "not a field of this model",
                        ),
                        field.value,
                        &field_names,
                    ));
                    continue;
                };
                let Some(op) = Op::parse(op_s.value) else {
                    diags.push(unknown_name(
                        "domain operator",
                        op_s.value,
                        op_s.span.clone(),
                        &OPERATORS,
                    ));
                    continue;
                };
                match Condition::new(field.value, &ty, op, &to_json(&parts[2])) {
                    Ok(c) => tokens.push(Token::Cond(c)),
                    Err(e) => {
                        let (span, label) = if matches!(
                            e,
                            crate::domain::filter::ConditionError::OperatorType { .. }
                        ) {
                            (
                                op_s.span.clone(),
                                format!("does not fit a {} field", ty.name()),
                            )
                        } else {
                            (parts[2].span.clone(), "invalid value".to_string())
                        };
                        diags.push(Diagnostic::error(
                            format!("invalid domain condition on `{}`: {e}", field.value),
                            span,
                            label,
                        ));
                    }
                }
            }
            Node::Array(parts) => diags.push(Diagnostic::error(
                format!("a domain condition has 3 elements, found {}", parts.len()),
                it.span.clone(),
                "expected [field, operator, value]",
            )),
            _ => diags.push(wrong_type(
                "domain",
                it,
                "a condition array or `&`, `|`, `!`",
            )),
        }
    }
    if diags.len() != before {
        return Domain::All;
    }
    match Domain::from_tokens(tokens) {
        Ok(d) => d,
        Err(e) => {
            diags.push(Diagnostic::error(
                format!("invalid domain: {e}"),
                spans[e.index].clone(),
                "missing operand",
            ));
            Domain::All
        }
    }
}
