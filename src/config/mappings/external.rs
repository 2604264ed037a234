//! External models: fields, and the Dropbox folder of a Dropbox model.

use super::*;

pub(super) fn compile_external_model(
    d: &Decl<'_>,
    diags: &mut Diagnostics,
) -> Option<ExternalModel> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "external model", diags);
    let t = as_table(&name, d.item, diags)?;
    check_keys(t, &EXT_MODEL_KEYS, diags);
    let kind = kind_of(t, diags)?;
    let label = str_of(t, "name", diags).map(|s| s.value.to_string());
    let mut fields = BTreeMap::new();
    if let Some((ft, _)) = table_of(t, "fields", diags) {
        for (k, item) in ft {
            let Some(f) = compile_field(k, item, &[], diags) else {
                continue;
            };
            if f.ty.is_relational() {
                diags.push(Diagnostic::error(
                    format!("external field `{}` cannot be relational", f.name),
                    item.span.clone(),
                    "relations are declared on the local side",
                ));
                continue;
            }
            fields.insert(f.name, f.ty);
        }
    }
    let mut dropbox = None;
    match kind {
        ServiceKind::Rest => {
            for key in ["root", "recursive", "pattern"] {
                if let Some((k, _)) = entry(t, key) {
                    diags.push(Diagnostic::error(
                        format!("`{key}` only applies to Dropbox external models"),
                        k.span.clone(),
                        "this external model is rest",
                    ));
                }
            }
            if entry(t, "fields").is_none() {
                diags.push(Diagnostic::error(
                    format!("external model `{name}` has no `fields`"),
                    d.key.span.clone(),
                    "declare the external system's fields",
                ));
            }
        }
        ServiceKind::Dropbox => {
            let root = match str_of(t, "root", diags) {
                None => String::new(),
                Some(s)
                    if s.value.is_empty()
                        || (s.value.starts_with('/') && !s.value.ends_with('/')) =>
                {
                    s.value.to_string()
                }
                Some(s) => {
                    diags.push(
                        Diagnostic::error(format!("invalid Dropbox root {}", s.shown()), s.span, "not a folder path")
                            .with_help("use `\"\"` for the whole account, or a path like `/DMS/Students` (no trailing `/`)"),
                    );
                    String::new()
                }
            };
            let recursive = bool_of(t, "recursive", diags).unwrap_or(false);
            let pattern =
                str_of(t, "pattern", diags).and_then(|s| match PathPattern::parse(s.value) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        diags.push(Diagnostic::error(
                            format!("invalid path pattern: {e}"),
                            s.span,
                            "bad pattern",
                        ));
                        None
                    }
                });
            if let Some(p) = &pattern {
                if p.segments.len() > 1 && !recursive {
                    let (k, _) = entry(t, "pattern").expect("read above");
                    diags.push(
                        Diagnostic::error(
                            "a pattern with several segments needs `recursive = true`",
                            k.span.clone(),
                            "nested pattern",
                        )
                        .with_help("without it only the root's direct entries are listed"),
                    );
                }
                for c in p.captures() {
                    fields.entry(c.to_string()).or_insert(FieldType::Char);
                }
            }
            for (f, ty) in DROPBOX_ENTRY_FIELDS.iter() {
                fields.insert(f.to_string(), ty.clone());
            }
            fields.insert("content".into(), FieldType::Binary);
            dropbox = Some(DropboxFolder {
                root,
                recursive,
                pattern,
            });
        }
    }
    ok_name.then_some(ExternalModel {
        name,
        label,
        kind,
        fields,
        dropbox,
    })
}
