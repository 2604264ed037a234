//! The configuration of the `dropbox` kind: a Dropbox account, and external models that
//! mirror one of its folders (a root, recursion, a path pattern naming the records).

use super::spec::{DROPBOX_ENTRY_FIELDS, DropboxFolder, DropboxService, Names, PathPattern};
use crate::config::kit::*;
use crate::domain::plan::{ExternalModel, ServiceSettings, WebService};
use crate::domain::value::FieldType;
use std::sync::Arc;

pub const DROPBOX_KEYS: [&str; 8] = [
    "kind",
    "description",
    "app_key",
    "app_secret",
    "refresh_token",
    "access_token",
    "api_url",
    "active",
];
/// The keys of a Dropbox external model.
pub const DROPBOX_MODEL_KEYS: [&str; 4] = ["root", "recursive", "pattern", "names"];

/// The `dropbox` kind.
pub struct Dropbox;

impl Kind for Dropbox {
    fn name(&self) -> &'static str {
        "dropbox"
    }

    fn label(&self) -> &'static str {
        "Dropbox"
    }

    fn models_called(&self) -> &'static str {
        "Dropbox external models"
    }

    fn service_keys(&self) -> &'static [&'static str] {
        &DROPBOX_KEYS
    }

    fn compile_service(
        &self,
        d: &Declared<'_>,
        diags: &mut Diagnostics,
    ) -> Option<Arc<dyn ServiceSettings>> {
        let t = d.table;
        let what = &d.what;
        let app_key = required_str(t, "app_key", &d.key.span, what, diags);
        let app_secret = required_str(t, "app_secret", &d.key.span, what, diags);
        let refresh_token = str_of(t, "refresh_token", diags).map(|s| secret(&s));
        let access_token = str_of(t, "access_token", diags).map(|s| secret(&s));
        if entry(t, "refresh_token").is_none() && entry(t, "access_token").is_none() {
            diags.push(Diagnostic::error(
                format!("{what} needs `refresh_token` (or `access_token`)"),
                d.key.span.clone(),
                "no credentials",
            ));
        }
        let api_url = str_of(t, "api_url", diags).and_then(|s| check_url("api_url", &s, diags));
        Some(Arc::new(DropboxService {
            app_key: secret(&app_key?),
            app_secret: secret(&app_secret?),
            refresh_token,
            access_token,
            api_url,
        }))
    }

    fn model_keys(&self) -> &'static [&'static str] {
        &DROPBOX_MODEL_KEYS
    }

    fn compile_model(&self, d: &Declared<'_>, diags: &mut Diagnostics) -> Option<CompiledModel> {
        let t = d.table;
        let mut fields = compile_plain_fields(t, diags);
        let root = match str_of(t, "root", diags) {
            None => String::new(),
            Some(s)
                if s.value.is_empty() || (s.value.starts_with('/') && !s.value.ends_with('/')) =>
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
        let names = enum_of(t, "names", Names::parse, &["refuse", "lookalike"], diags)
            .flatten()
            .unwrap_or_default();
        let pattern = str_of(t, "pattern", diags).and_then(|s| match PathPattern::parse(s.value) {
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
        Some(CompiledModel {
            fields,
            settings: Arc::new(DropboxFolder {
                root,
                recursive,
                pattern,
                names,
            }),
        })
    }

    fn identity(&self, _: &ExternalModel) -> Identity {
        Identity::Default("id".into())
    }

    fn takes_endpoints(&self) -> bool {
        false
    }

    fn can_archive(&self, _: Option<&ExternalModel>) -> bool {
        false
    }

    fn cannot_reconcile(&self, _: &WebService, _: &ExternalModel) -> Option<(String, String)> {
        None
    }

    fn undeclared_name(&self, _: &ExternalModel, _: &Str<'_>, _: &mut Diagnostics) -> Option<bool> {
        None
    }

    fn reads_any_member(&self) -> bool {
        false
    }

    fn check_sync(&self, _: &SyncCheck<'_>, _: &mut Diagnostics) {}
}
