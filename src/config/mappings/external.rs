//! External models: the keys every kind shares (`name`, `kind`, `description`, `fields`); the
//! kind compiles the rest in its own folder, and a key of another kind is named as such.

use super::*;

pub(super) fn compile_external_model(
    d: &Decl<'_>,
    kinds: &Kinds,
    diags: &mut Diagnostics,
) -> Option<ExternalModel> {
    let name = d.key.name.clone();
    let ok_name = check_ident(d.key, "external model", diags);
    let t = as_table(&name, d.item, diags)?;
    let every_key: Vec<&str> = EXT_MODEL_KEYS
        .iter()
        .copied()
        .chain(kinds.iter().flat_map(|k| k.model_keys().iter().copied()))
        .collect();
    check_keys(t, &every_key, diags);
    let kind = kind_of(t, kinds, diags)?;
    let label = str_of(t, "name", diags).map(|s| s.value.to_string());
    // A key another kind takes is named for what it is.
    for (k, _) in t {
        if EXT_MODEL_KEYS.contains(&k.name.as_str()) || kind.model_keys().contains(&k.name.as_str())
        {
            continue;
        }
        if let Some(owner) = kinds
            .iter()
            .find(|o| o.model_keys().contains(&k.name.as_str()))
        {
            diags.push(Diagnostic::error(
                format!("`{}` only applies to {}", k.name, owner.models_called()),
                k.span.clone(),
                format!("this external model is {}", kind.name()),
            ));
        }
    }
    let declared = Declared {
        key: d.key,
        table: t,
        what: format!("external model `{name}`"),
    };
    let compiled = kind.compile_model(&declared, diags)?;
    ok_name.then_some(ExternalModel {
        name,
        label,
        kind: kind.name(),
        fields: compiled.fields,
        settings: compiled.settings,
    })
}

/// `fields` in recsync's types (`name = "char"` or a table), as most kinds declare them;
/// relations are declared on the local side only.
pub fn compile_plain_fields(t: &Table, diags: &mut Diagnostics) -> BTreeMap<String, FieldType> {
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
    fields
}
