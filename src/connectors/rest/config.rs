//! The configuration of the `rest` kind, the seed protocol: a web service's URLs (pull,
//! confirm, ship, list) and authentication; its external models declare fields only.

use super::spec::{RestModel, RestService};
use crate::config::kit::*;
use crate::domain::mapping::Direction;
use crate::domain::plan::{Auth, Endpoint, ExternalModel, Mode, ServiceSettings, WebService};
use std::sync::Arc;
use std::time::Duration;

pub const REST_KEYS: [&str; 11] = [
    "kind",
    "description",
    "url",
    "confirmation_url",
    "shipping_url",
    "list_url",
    "auth",
    "timeout",
    "max_concurrency",
    "signing_secret",
    "active",
];

/// The `rest` kind (the default when `kind` is left out).
pub struct Rest;

impl Kind for Rest {
    fn name(&self) -> &'static str {
        "rest"
    }

    fn label(&self) -> &'static str {
        "REST"
    }

    fn models_called(&self) -> &'static str {
        "external models of kind `rest`"
    }

    fn service_keys(&self) -> &'static [&'static str] {
        &REST_KEYS
    }

    fn compile_service(
        &self,
        d: &Declared<'_>,
        diags: &mut Diagnostics,
    ) -> Option<Arc<dyn ServiceSettings>> {
        let t = d.table;
        let url = str_of(t, "url", diags).and_then(|s| check_url("url", &s, diags));
        let confirmation_url = str_of(t, "confirmation_url", diags)
            .and_then(|s| check_url("confirmation_url", &s, diags));
        let shipping_url =
            str_of(t, "shipping_url", diags).and_then(|s| check_url("shipping_url", &s, diags));
        let list_url = str_of(t, "list_url", diags).and_then(|s| check_url("list_url", &s, diags));
        if let (Some((k, _)), None) = (entry(t, "confirmation_url"), entry(t, "url")) {
            diags.push(Diagnostic::error(
                "`confirmation_url` is set but `url` is not",
                k.span.clone(),
                "confirmations follow pulls from `url`",
            ));
        }
        let auth = match table_of(t, "auth", diags) {
            None => Auth::None,
            Some((at, span)) => compile_auth(at, &span, false, diags)?,
        };
        let timeout = duration_of(t, "timeout", diags).unwrap_or(Duration::from_secs(30));
        let max_concurrency = max_concurrency_of(t, 8, diags);
        let signing = signing_of(t, "signing_secret", diags);
        Some(Arc::new(RestService {
            url,
            confirmation_url,
            shipping_url,
            list_url,
            auth,
            timeout,
            max_concurrency,
            signing,
        }))
    }

    fn model_keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn compile_model(&self, d: &Declared<'_>, diags: &mut Diagnostics) -> Option<CompiledModel> {
        let t = d.table;
        let fields = compile_plain_fields(t, diags);
        if entry(t, "fields").is_none() {
            diags.push(Diagnostic::error(
                format!("external model `{}` has no `fields`", d.name()),
                d.key.span.clone(),
                "declare the external system's fields",
            ));
        }
        Some(CompiledModel {
            fields,
            settings: Arc::new(RestModel),
        })
    }

    fn identity(&self, _: &ExternalModel) -> Identity {
        Identity::Required
    }

    fn takes_endpoints(&self) -> bool {
        true
    }

    fn can_archive(&self, _: Option<&ExternalModel>) -> bool {
        false
    }

    fn cannot_reconcile(&self, w: &WebService, _: &ExternalModel) -> Option<(String, String)> {
        w.settings::<RestService>()
            .is_some_and(|r| r.list_url.is_none())
            .then(|| {
                (
                    format!(
                        "web service `{}` cannot list every id, so this sync cannot reconcile",
                        w.name
                    ),
                    "set `list_url` on the web service (protocol.md section 2, List), or remove `reconcile`".to_string(),
                )
            })
    }

    fn undeclared_name(&self, _: &ExternalModel, _: &Str<'_>, _: &mut Diagnostics) -> Option<bool> {
        None
    }

    fn reads_any_member(&self) -> bool {
        false
    }

    fn check_sync(&self, s: &SyncCheck<'_>, diags: &mut Diagnostics) {
        check_feasible(
            s.what,
            s.direction,
            s.mode,
            s.web_service,
            s.endpoints,
            s.span.clone(),
            diags,
        );
    }
}

/// What a sync has to do must be possible with what its web service offers: a REST sync that
/// sends needs `shipping_url` or endpoints, and a cron sync that only receives needs a `url`.
fn check_feasible(
    what: &str,
    dir: Direction,
    mode: Mode,
    w: &WebService,
    endpoints: &[Endpoint],
    dir_span: Span,
    diags: &mut Diagnostics,
) {
    let Some(rest) = w.settings::<RestService>() else {
        return;
    };
    if dir.to_external() && rest.shipping_url.is_none() && endpoints.iter().all(|e| !e.active) {
        diags.push(
            Diagnostic::error(
                format!("{what} sends changes, but web service `{}` has no `shipping_url` and the sync has no `endpoints`", w.name),
                dir_span.clone(),
                "direction includes to_external",
            )
            .with_help("set `shipping_url` on the web service, add `[[syncs.<CODE>.endpoints]]`, or use direction = \"to_local\""),
        );
    }
    if mode == Mode::Cron && dir == Direction::ToLocal && rest.url.is_none() {
        diags.push(
            Diagnostic::error(
                format!("cron {what} has nothing to do: it only receives, and web service `{}` has no `url` to pull from", w.name),
                dir_span,
                "nothing to pull",
            )
            .with_help("set `url` on the web service, or use mode = \"realtime\" for a sync that only receives /sync calls"),
        );
    }
}
