//! The configuration compiler's diagnostics: each kind of mistake gives this exact text, with
//! file, line, column and a caret under the offending value.

use recsync::config::compile_texts;
use std::collections::HashMap;

const BASE: &str = include_str!("fixtures/base.toml");

fn env() -> HashMap<String, String> {
    HashMap::from([("CRM_KEY".to_string(), "s3cr3t-crm-key-value".to_string())])
}

/// Compiles the base file plus `snippet` as `mappings/crm.toml` and returns the rendered errors.
fn errors_of(snippet: &str) -> String {
    match compile_texts(
        &[("mappings/base.toml", BASE), ("mappings/crm.toml", snippet)],
        &env(),
        recsync::connectors::KINDS,
    ) {
        Ok(_) => "(valid)".to_string(),
        Err(e) => e.render(),
    }
}

fn check(name: &str, snippet: &str, expected: &str) {
    let actual = errors_of(snippet);
    if std::env::var_os("RECSYNC_BLESS").is_some() {
        let mut out = std::fs::read_to_string("/tmp/bless.txt").unwrap_or_default();
        out.push_str(&format!("=== {name}\n{actual}\n"));
        std::fs::write("/tmp/bless.txt", out).unwrap();
        return;
    }
    assert_eq!(actual, expected.trim_start_matches('\n'), "case {name}");
}

const SYNC_HEAD: &str = r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "bidirectional"
every = "15m"
external_ref = "unique_id"
"#;

fn sync(extra: &str) -> String {
    format!("{SYNC_HEAD}{extra}")
}

#[test]
fn base_and_a_good_sync_are_valid() {
    assert_eq!(
        errors_of(&sync(
            "fields = [{ local = \"name\", external = \"full_name\" }]\n"
        )),
        "(valid)"
    );
}

#[test]
fn toml_syntax() {
    check(
        "toml_syntax",
        r#"[syncs.CON
model = "contact"
"#,
        r#"
error: invalid TOML: unclosed table, expected `]`
 --> mappings/crm.toml:1:10
  |
1 | [syncs.CON
  |          ^

error: configuration has 1 error"#,
    );
}

/// A table header given twice is one mistake, reported once (not again for each key under it).
#[test]
fn duplicate_table_header() {
    check(
        "duplicate_table_header",
        r#"[models.lead]
fields = { name = "char" }

[models.lead]
fields = { name = "char" }
display = "name"
"#,
        r#"
error: invalid TOML: duplicate key
 --> mappings/crm.toml:4:9
  |
4 | [models.lead]
  |         ^^^^

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_section() {
    check(
        "unknown_section",
        r#"[modles.x]
"#,
        r#"
error: unknown field `modles`
 --> mappings/crm.toml:1:2
  |
1 | [modles.x]
  |  ^^^^^^ unknown field
  |
  = help: did you mean `models`?

error: configuration has 1 error"#,
    );
}

#[test]
fn misspelt_key() {
    check(
        "misspelt_key",
        &sync("schedul = \"0 * * * * *\"\n"),
        r#"
error: unknown field `schedul`
 --> mappings/crm.toml:8:1
  |
8 | schedul = "0 * * * * *"
  | ^^^^^^^ unknown field
  |
  = help: did you mean `schedule`?

error: configuration has 1 error"#,
    );
}

#[test]
fn wrong_type() {
    check(
        "wrong_type",
        &sync("limit = \"100\"\n"),
        r#"
error: wrong type for `limit`: expected an integer, found a string
 --> mappings/crm.toml:8:9
  |
8 | limit = "100"
  |         ^^^^^ expected an integer

error: configuration has 1 error"#,
    );
}

#[test]
fn missing_required() {
    check(
        "missing_required",
        r#"[syncs.CON]
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
"#,
        r#"
error: missing field `model` in sync `CON`
 --> mappings/crm.toml:1:8
  |
1 | [syncs.CON]
  |        ^^^ `model` is required

error: configuration has 1 error"#,
    );
}

#[test]
fn duplicate_sync() {
    check(
        "duplicate_sync",
        r#"[syncs.COMP]
model = "company"
external_model = "crm_company"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
"#,
        r#"
error: duplicate sync `COMP`
  --> mappings/crm.toml:1:8
   |
 1 | [syncs.COMP]
   |        ^^^^ declared again here
   |
  ::: mappings/base.toml:41:8
   |
41 | [syncs.COMP]
   |        ---- first declared here

error: configuration has 1 error"#,
    );
}

#[test]
fn duplicate_model() {
    check(
        "duplicate_model",
        r#"[models.contact]
fields = { name = "char" }
"#,
        r#"
error: duplicate model `contact`
 --> mappings/crm.toml:1:9
  |
1 | [models.contact]
  |         ^^^^^^^ declared again here
  |
 ::: mappings/base.toml:7:9
  |
7 | [models.contact]
  |         ------- first declared here

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_field_type() {
    check(
        "unknown_field_type",
        r#"[models.lead]
fields = { email = "strng" }
"#,
        r#"
error: unknown field type `strng`
 --> mappings/crm.toml:2:20
  |
2 | fields = { email = "strng" }
  |                    ^^^^^^^ unknown field type
  |
  = help: expected one of `char`, `text`, `integer`, `float`, `boolean`, `date`, `datetime`, `selection`, `many2one`, `one2many`, `many2many`, `binary`, `json`

error: configuration has 1 error"#,
    );
}

#[test]
fn relational_without_model() {
    check(
        "relational_without_model",
        r#"[models.lead]
fields = { company = "many2one" }
"#,
        r#"
error: many2one field `company` needs `model`
 --> mappings/crm.toml:2:22
  |
2 | fields = { company = "many2one" }
  |                      ^^^^^^^^^^ relational type

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_related_model() {
    check(
        "unknown_related_model",
        r#"[models.lead]
fields = { company = { type = "many2one", model = "compny" } }
"#,
        r#"
error: unknown model `compny`
 --> mappings/crm.toml:2:51
  |
2 | fields = { company = { type = "many2one", model = "compny" } }
  |                                                   ^^^^^^^^ unknown model
  |
  = help: did you mean `company`?

error: configuration has 1 error"#,
    );
}

#[test]
fn selection_without_values() {
    check(
        "selection_without_values",
        r#"[models.lead]
fields = { stage = "selection" }
"#,
        r#"
error: selection field `stage` needs `values`
 --> mappings/crm.toml:2:20
  |
2 | fields = { stage = "selection" }
  |                    ^^^^^^^^^^^ selection type

error: configuration has 1 error"#,
    );
}

#[test]
fn reserved_field() {
    check(
        "reserved_field",
        r#"[models.lead]
fields = { id = "integer" }
"#,
        r#"
error: field name `id` is reserved
 --> mappings/crm.toml:2:12
  |
2 | fields = { id = "integer" }
  |            ^^ every record has this field already

error: configuration has 1 error"#,
    );
}

#[test]
fn display_unknown() {
    check(
        "display_unknown",
        r#"[models.lead]
display = "nme"
fields = { name = "char" }
"#,
        r#"
error: unknown field `nme` on model `lead`
 --> mappings/crm.toml:2:11
  |
2 | display = "nme"
  |           ^^^^^ not a field of this model
  |
  = help: did you mean `name`?

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_model() {
    check(
        "unknown_model",
        r#"[syncs.CON]
model = "contakt"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
"#,
        r#"
error: unknown model `contakt`
 --> mappings/crm.toml:2:9
  |
2 | model = "contakt"
  |         ^^^^^^^^^ unknown model
  |
  = help: did you mean `contact`?

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_external_model() {
    check(
        "unknown_external_model",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contcat"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
"#,
        r#"
error: unknown external model `crm_contcat`
 --> mappings/crm.toml:3:18
  |
3 | external_model = "crm_contcat"
  |                  ^^^^^^^^^^^^^ unknown external model
  |
  = help: did you mean `crm_contact`?

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_web_service() {
    check(
        "unknown_web_service",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crn"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
"#,
        r#"
error: unknown web service `crn`
 --> mappings/crm.toml:4:15
  |
4 | web_service = "crn"
  |               ^^^^^ unknown web service
  |
  = help: did you mean `crm`?

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_local_field() {
    check(
        "unknown_local_field",
        &sync("fields = [{ local = \"nme\", external = \"full_name\" }]\n"),
        r#"
error: unknown field `nme` on model `contact`
 --> mappings/crm.toml:8:21
  |
8 | fields = [{ local = "nme", external = "full_name" }]
  |                     ^^^^^ not a field of this model
  |
  = help: did you mean `name`?

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_external_field() {
    check(
        "unknown_external_field",
        &sync("fields = [{ local = \"name\", external = \"fullname\" }]\n"),
        r#"
error: unknown field `fullname` on external model `crm_contact`
 --> mappings/crm.toml:8:40
  |
8 | fields = [{ local = "name", external = "fullname" }]
  |                                        ^^^^^^^^^^ not an external field
  |
  = help: did you mean `full_name`?

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_external_ref() {
    check(
        "unknown_external_ref",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "uid"
"#,
        r#"
error: unknown field `uid` on external model `crm_contact`
 --> mappings/crm.toml:7:16
  |
7 | external_ref = "uid"
  |                ^^^^^ not an external field
  |
  = help: expected one of `company_id`, `email`, `full_name`, `status`, `unique_id`

error: configuration has 1 error"#,
    );
}

#[test]
fn bad_cron() {
    check(
        "bad_cron",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
schedule = "0 */15 * * *"
external_ref = "unique_id"
"#,
        r#"
error: invalid cron expression `0 */15 * * *`: Invalid pattern: Pattern must have 6 fields when seconds are required and years are disallowed.
 --> mappings/crm.toml:6:12
  |
6 | schedule = "0 */15 * * *"
  |            ^^^^^^^^^^^^^^ bad schedule
  |
  = help: use six fields with seconds, such as "0 */15 * * * *"

error: configuration has 1 error"#,
    );
}

#[test]
fn schedule_and_every() {
    check(
        "schedule_and_every",
        &sync("schedule = \"0 0 * * * *\"\n"),
        r#"
error: `schedule` and `every` are mutually exclusive
 --> mappings/crm.toml:6:1
  |
6 | every = "15m"
  | ^^^^^ remove one of the two

error: configuration has 1 error"#,
    );
}

#[test]
fn cron_without_schedule() {
    check(
        "cron_without_schedule",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
mode = "cron"
external_ref = "unique_id"
"#,
        r#"
error: cron sync `CON` needs `schedule` or `every`
 --> mappings/crm.toml:6:8
  |
6 | mode = "cron"
  |        ^^^^^^ no schedule
  |
  = help: add schedule = "0 */15 * * * *" or every = "15m", or use mode = "realtime"

error: configuration has 1 error"#,
    );
}

#[test]
fn bad_every() {
    check(
        "bad_every",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
every = "15 minutes"
external_ref = "unique_id"
"#,
        r#"
error: invalid duration `15 minutes` for `every`
 --> mappings/crm.toml:6:9
  |
6 | every = "15 minutes"
  |         ^^^^^^^^^^^^ not a duration
  |
  = help: use a number and a unit, such as `500ms`, `30s`, `15m`, `2h` or `1d`

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_timezone() {
    check(
        "unknown_timezone",
        &sync("timezone = \"Europe/Madird\"\n"),
        r#"
error: unknown time zone `Europe/Madird`
 --> mappings/crm.toml:8:12
  |
8 | timezone = "Europe/Madird"
  |            ^^^^^^^^^^^^^^^ not an IANA time zone
  |
  = help: use a name such as `UTC` or `Europe/Madrid`

error: configuration has 1 error"#,
    );
}

#[test]
fn bad_direction() {
    check(
        "bad_direction",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "both"
every = "1m"
external_ref = "unique_id"
"#,
        r#"
error: invalid `direction` value `both`
 --> mappings/crm.toml:5:13
  |
5 | direction = "both"
  |             ^^^^^^ not a direction
  |
  = help: expected one of `to_external`, `to_local`, `bidirectional`

error: configuration has 1 error"#,
    );
}

#[test]
fn bad_jsonpath() {
    check(
        "bad_jsonpath",
        &sync("fields = [{ local = \"name\", external = \"$.address[\" }]\n"),
        r#"
error: invalid JSONPath `$.address[`
 --> mappings/crm.toml:8:40
  |
8 | fields = [{ local = "name", external = "$.address[" }]
  |                                        ^^^^^^^^^^^^ not a valid RFC 9535 JSONPath

error: configuration has 1 error"#,
    );
}

#[test]
fn unbuildable_jsonpath() {
    check(
        "unbuildable_jsonpath",
        &sync("fields = [{ local = \"name\", external = \"$.names[*].first\" }]\n"),
        r#"
error: JSONPath `$.names[*].first` cannot be built when sending
 --> mappings/crm.toml:8:40
  |
8 | fields = [{ local = "name", external = "$.names[*].first" }]
  |                                        ^^^^^^^^^^^^^^^^^^ not a plain member path
  |
  = help: only paths like `$.address.city` can be sent; add direction = "to_local" to this pair

error: configuration has 1 error"#,
    );
}

#[test]
fn domain_bool_like() {
    check(
        "domain_bool_like",
        &sync("domain = [[\"customer\", \"like\", \"yes\"]]\n"),
        r#"
error: invalid domain condition on `customer`: operator `like` cannot be used on a boolean field
 --> mappings/crm.toml:8:24
  |
8 | domain = [["customer", "like", "yes"]]
  |                        ^^^^^^ does not fit a boolean field

error: configuration has 1 error"#,
    );
}

#[test]
fn domain_unknown_field() {
    check(
        "domain_unknown_field",
        &sync("domain = [[\"custmer\", \"=\", true]]\n"),
        r#"
error: unknown field `custmer` on model `contact`
 --> mappings/crm.toml:8:12
  |
8 | domain = [["custmer", "=", true]]
  |            ^^^^^^^^^ not a field of this model
  |
  = help: did you mean `customer`?

error: configuration has 1 error"#,
    );
}

#[test]
fn domain_unknown_operator() {
    check(
        "domain_unknown_operator",
        &sync("domain = [[\"name\", \"~\", \"x\"]]\n"),
        r#"
error: unknown domain operator `~`
 --> mappings/crm.toml:8:20
  |
8 | domain = [["name", "~", "x"]]
  |                    ^^^ unknown domain operator
  |
  = help: expected one of `=`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`, `like`, `ilike`, `=like`, `=ilike`

error: configuration has 1 error"#,
    );
}

#[test]
fn domain_arity() {
    check(
        "domain_arity",
        &sync("domain = [\"|\", [\"name\", \"=\", \"x\"]]\n"),
        r#"
error: invalid domain: operator `|` needs 2 operand(s) after it
 --> mappings/crm.toml:8:11
  |
8 | domain = ["|", ["name", "=", "x"]]
  |           ^^^ missing operand

error: configuration has 1 error"#,
    );
}

#[test]
fn domain_bad_value() {
    check(
        "domain_bad_value",
        &sync("domain = [[\"visits\", \">\", \"many\"]]\n"),
        r#"
error: invalid domain condition on `visits`: value does not fit the integer field: not a valid integer
 --> mappings/crm.toml:8:27
  |
8 | domain = [["visits", ">", "many"]]
  |                           ^^^^^^ invalid value

error: configuration has 1 error"#,
    );
}

#[test]
fn domain_condition_shape() {
    check(
        "domain_condition_shape",
        &sync("domain = [[\"visits\", \">\"]]\n"),
        r#"
error: a domain condition has 3 elements, found 2
 --> mappings/crm.toml:8:11
  |
8 | domain = [["visits", ">"]]
  |           ^^^^^^^^^^^^^^^ expected [field, operator, value]

error: configuration has 1 error"#,
    );
}

#[test]
fn map_not_injective() {
    check(
        "map_not_injective",
        &sync(
            "fields = [{ local = \"stage\", external = \"status\", map = { lead = \"L\", customer = \"C\", lost = \"L\" } }]\n",
        ),
        r#"
error: `map` is not one-to-one: `lead` and `lost` both map to "L"
 --> mappings/crm.toml:8:94
  |
8 | fields = [{ local = "stage", external = "status", map = { lead = "L", customer = "C", lost = "L" } }]
  |                                                                                              ^^^ repeated external value
  |
 ::: mappings/crm.toml:8:66
  |
8 | fields = [{ local = "stage", external = "status", map = { lead = "L", customer = "C", lost = "L" } }]
  |                                                                  --- first used here

error: configuration has 1 error"#,
    );
}

#[test]
fn map_bad_key() {
    check(
        "map_bad_key",
        &sync(
            "fields = [{ local = \"stage\", external = \"status\", map = { prospect = \"P\" } }]\n",
        ),
        r#"
error: map key `prospect` is not a valid value of `stage`: not one of the allowed values (`lead`, `customer`, `lost`)
 --> mappings/crm.toml:8:59
  |
8 | fields = [{ local = "stage", external = "status", map = { prospect = "P" } }]
  |                                                           ^^^^^^^^ invalid local value

error: configuration has 1 error"#,
    );
}

#[test]
fn ref_sync_missing() {
    check(
        "ref_sync_missing",
        &sync(
            "fields = [{ local = \"company\", external = \"company_id\", ref_sync = \"COMPX\" }]\n",
        ),
        r#"
error: unknown sync `COMPX`
 --> mappings/crm.toml:8:68
  |
8 | fields = [{ local = "company", external = "company_id", ref_sync = "COMPX" }]
  |                                                                    ^^^^^^^ unknown sync
  |
  = help: did you mean `COMP`?

error: configuration has 1 error"#,
    );
}

#[test]
fn ref_sync_wrong_model() {
    check(
        "ref_sync_wrong_model",
        &sync(
            "fields = [{ local = \"company\", external = \"company_id\", ref_sync = \"CON\" }]\n",
        ),
        r#"
error: sync `CON` syncs model `contact`, but `company` relates to model `company`
 --> mappings/crm.toml:8:68
  |
8 | fields = [{ local = "company", external = "company_id", ref_sync = "CON" }]
  |                                                                    ^^^^^ wrong model

error: configuration has 1 error"#,
    );
}

#[test]
fn ref_field_unknown() {
    check(
        "ref_field_unknown",
        &sync(
            "fields = [{ local = \"company\", external = \"company_id\", ref_field = \"cod\" }]\n",
        ),
        r#"
error: unknown field `cod` on model `company`
 --> mappings/crm.toml:8:69
  |
8 | fields = [{ local = "company", external = "company_id", ref_field = "cod" }]
  |                                                                     ^^^^^ not a field of the related model
  |
  = help: did you mean `code`?

error: configuration has 1 error"#,
    );
}

#[test]
fn ref_on_non_relational() {
    check(
        "ref_on_non_relational",
        &sync("fields = [{ local = \"email\", external = \"email\", ref_field = \"code\" }]\n"),
        r#"
error: `ref_field` needs a relational field, but `email` is char
 --> mappings/crm.toml:8:62
  |
8 | fields = [{ local = "email", external = "email", ref_field = "code" }]
  |                                                              ^^^^^^ not a relational field

error: configuration has 1 error"#,
    );
}

#[test]
fn direction_widened() {
    check(
        "direction_widened",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
every = "1m"
external_ref = "unique_id"
fields = [{ local = "name", external = "full_name", direction = "bidirectional" }]
"#,
        r#"
error: field direction `bidirectional` is wider than the sync's direction `to_local`
 --> mappings/crm.toml:8:65
  |
8 | fields = [{ local = "name", external = "full_name", direction = "bidirectional" }]
  |                                                                 ^^^^^^^^^^^^^^^ a field pair may narrow the direction, never widen it

error: configuration has 1 error"#,
    );
}

#[test]
fn sends_without_shipping() {
    check(
        "sends_without_shipping",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "pull_only"
direction = "bidirectional"
every = "1m"
external_ref = "unique_id"
"#,
        r#"
error: sync `CON` sends changes, but web service `pull_only` has no `shipping_url` and the sync has no `endpoints`
 --> mappings/crm.toml:5:13
  |
5 | direction = "bidirectional"
  |             ^^^^^^^^^^^^^^^ direction includes to_external
  |
  = help: set `shipping_url` on the web service, add `[[syncs.<CODE>.endpoints]]`, or use direction = "to_local"

error: configuration has 1 error"#,
    );
}

#[test]
fn cron_nothing_to_do() {
    check(
        "cron_nothing_to_do",
        r#"[syncs.CON]
model = "contact"
external_model = "crm_contact"
web_service = "nothing"
direction = "to_local"
every = "1m"
external_ref = "unique_id"
"#,
        r#"
error: cron sync `CON` has nothing to do: it only receives, and web service `nothing` has no `url` to pull from
 --> mappings/crm.toml:5:13
  |
5 | direction = "to_local"
  |             ^^^^^^^^^^ nothing to pull
  |
  = help: set `url` on the web service, or use mode = "realtime" for a sync that only receives /sync calls

error: configuration has 1 error"#,
    );
}

#[test]
fn missing_env_var() {
    check(
        "missing_env_var",
        r#"[web_services.erp]
shipping_url = "https://erp.example.com/ship"
auth = { mode = "bearer", token = "${ERP_TOKEN}" }
"#,
        r#"
error: environment variable `ERP_TOKEN` is not set
 --> mappings/crm.toml:3:35
  |
3 | auth = { mode = "bearer", token = "${ERP_TOKEN}" }
  |                                   ^^^^^^^^^^^^^^ used here
  |
  = help: set `ERP_TOKEN`, or give a default with `${ERP_TOKEN:-...}`

error: configuration has 1 error"#,
    );
}

#[test]
fn invalid_url() {
    check(
        "invalid_url",
        r#"[web_services.erp]
url = "ftp://erp.example.com/fetch"
"#,
        r#"
error: invalid URL for `url`: `ftp://erp.example.com/fetch` is not an http(s) URL
 --> mappings/crm.toml:2:7
  |
2 | url = "ftp://erp.example.com/fetch"
  |       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ expected http:// or https://

error: configuration has 1 error"#,
    );
}

#[test]
fn unknown_auth_mode() {
    check(
        "unknown_auth_mode",
        r#"[web_services.erp]
url = "https://erp.example.com/fetch"
auth = { mode = "oauth", token = "t" }
"#,
        r#"
error: unknown auth mode `oauth`
 --> mappings/crm.toml:3:17
  |
3 | auth = { mode = "oauth", token = "t" }
  |                 ^^^^^^^ unknown auth mode
  |
  = help: expected one of `none`, `api_key`, `basic`, `bearer`

error: configuration has 1 error"#,
    );
}

#[test]
fn kind_mismatch() {
    check(
        "kind_mismatch",
        r#"[external_models.files]
kind = "dropbox"
root = "/Docs"

[syncs.FILES]
model = "contact"
external_model = "files"
web_service = "crm"
direction = "to_local"
mode = "realtime"
"#,
        r#"
error: web service `crm` is rest but external model `files` is dropbox
 --> mappings/crm.toml:8:15
  |
8 | web_service = "crm"
  |               ^^^^^ kinds differ

error: configuration has 1 error"#,
    );
}

#[test]
fn bad_pattern() {
    check(
        "bad_pattern",
        r#"[external_models.files]
kind = "dropbox"
root = "/Docs"
recursive = true
pattern = "/{project}{po}/{doc}"
"#,
        r#"
error: invalid path pattern: captures `project` and `po` touch; put a literal between them
 --> mappings/crm.toml:5:11
  |
5 | pattern = "/{project}{po}/{doc}"
  |           ^^^^^^^^^^^^^^^^^^^^^^ bad pattern

error: configuration has 1 error"#,
    );
}

#[test]
fn bad_dropbox_names() {
    check(
        "bad_dropbox_names",
        r#"[external_models.files]
kind = "dropbox"
root = "/Docs"
pattern = "/{client}"
names = "replace"
"#,
        r#"
error: invalid `names` value `replace`
 --> mappings/crm.toml:5:9
  |
5 | names = "replace"
  |         ^^^^^^^^^ not a names
  |
  = help: expected one of `refuse`, `lookalike`

error: configuration has 1 error"#,
    );
}

#[test]
fn invalid_sync_code() {
    check(
        "invalid_sync_code",
        r#"[syncs."1CON"]
model = "contact"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
"#,
        r#"
error: invalid sync code `1CON`: may only contain ASCII letters, digits, `_` and `-`, starting with a letter
 --> mappings/crm.toml:1:8
  |
1 | [syncs."1CON"]
  |        ^^^^^^ invalid code

error: configuration has 1 error"#,
    );
}

#[test]
fn limit_out_of_range() {
    check(
        "limit_out_of_range",
        &sync("limit = 0\n"),
        r#"
error: `limit` must be between 1 and 10000
 --> mappings/crm.toml:8:9
  |
8 | limit = 0
  |         ^ out of range

error: configuration has 1 error"#,
    );
}

#[test]
fn endpoint_placeholder() {
    check(
        "endpoint_placeholder",
        &sync(
            "\n[[syncs.CON.endpoints]]\naction = \"write\"\nmethod = \"PUT\"\nurl = \"https://crm.example.com/contacts/{id}\"\n",
        ),
        r#"
error: unknown placeholder `{id}` in endpoint URL
  --> mappings/crm.toml:12:7
   |
12 | url = "https://crm.example.com/contacts/{id}"
   |       ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ unknown placeholder
   |
   = help: only `{external_id}` is filled in

error: configuration has 1 error"#,
    );
}

/// Every error in one run: the eight mistakes of the acceptance list, spread over two files.
#[test]
fn all_errors_are_reported_together() {
    let other = r#"[syncs.COMP]
model = "company"
external_model = "crm_company"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
"#;
    let broken = r#"[syncs.CON]
model = "contakt"
external_model = "crm_contact"
web_service = "crm"
direction = "bidirectional"
schedul = "0 */15 * * * *"
schedule = "0 */15 * *"
external_ref = "unique_id"
domain = [["customer", "like", "yes"]]
fields = [
  { local = "name", external = "$.a[" },
  { local = "stage", external = "status", map = { lead = "L", lost = "L" } },
  { local = "company", external = "company_id", ref_sync = "NOPE" },
]
"#;
    let err = compile_texts(
        &[
            ("mappings/base.toml", BASE),
            ("mappings/crm.toml", broken),
            ("mappings/other.toml", other),
        ],
        &env(),
        recsync::connectors::KINDS,
    )
    .unwrap_err();
    let summary = err.summary();
    let expected = [
        "mappings/crm.toml:2:9: unknown model `contakt`",
        "mappings/crm.toml:6:1: unknown field `schedul`",
        "mappings/crm.toml:7:12: invalid cron expression `0 */15 * *`",
        "mappings/other.toml:1:8: duplicate sync `COMP`",
    ];
    for e in expected {
        assert!(
            summary.iter().any(|s| s.starts_with(e)),
            "missing {e:?} in {summary:#?}"
        );
    }
    // The model is unknown, so the domain and field pairs of CON cannot be checked against it;
    // with the model fixed, the rest of the mistakes show up in one run as well.
    let fixed = broken.replace("contakt", "contact");
    let err = compile_texts(
        &[
            ("mappings/base.toml", BASE),
            ("mappings/crm.toml", &fixed),
            ("mappings/other.toml", other),
        ],
        &env(),
        recsync::connectors::KINDS,
    )
    .unwrap_err();
    let summary = err.summary();
    let expected = [
        "mappings/crm.toml:6:1: unknown field `schedul`",
        "mappings/crm.toml:7:12: invalid cron expression",
        "mappings/crm.toml:9:24: invalid domain condition on `customer`: operator `like` cannot be used on a boolean field",
        "mappings/crm.toml:11:32: invalid JSONPath `$.a[`",
        "mappings/crm.toml:12:70: `map` is not one-to-one",
        "mappings/crm.toml:13:60: unknown sync `NOPE`",
        "mappings/other.toml:1:8: duplicate sync `COMP`",
    ];
    for e in expected {
        assert!(
            summary.iter().any(|s| s.starts_with(e)),
            "missing {e:?} in {summary:#?}"
        );
    }
    assert_eq!(summary.len(), expected.len(), "{summary:#?}");
}

/// Values from the environment never appear in diagnostics, even when a message would quote them.
#[test]
fn secrets_never_reach_diagnostics() {
    let env = HashMap::from([
        ("CRM_KEY".to_string(), "s3cr3t-crm-key-value".to_string()),
        (
            "BAD_URL".to_string(),
            "ftp://user:hunter22@host/x".to_string(),
        ),
        ("ZONE".to_string(), "Mars/Olympus_Mons_Secret".to_string()),
    ]);
    let snippet = format!(
        "{SYNC_HEAD}timezone = \"${{ZONE}}\"\n\n[web_services.erp]\nurl = \"${{BAD_URL}}\"\n"
    );
    let err = compile_texts(
        &[
            ("mappings/base.toml", BASE),
            ("mappings/crm.toml", &snippet),
        ],
        &env,
        recsync::connectors::KINDS,
    )
    .unwrap_err();
    let text = format!("{}\n{}", err.render(), err.summary().join("\n"));
    assert!(
        text.contains("${BAD_URL}"),
        "the source text is shown: {text}"
    );
    assert!(!text.contains("hunter22"), "{text}");
    assert!(!text.contains("Olympus_Mons_Secret"), "{text}");
    assert!(!text.contains("s3cr3t-crm-key-value"), "{text}");
    assert!(
        text.contains("[secret]") || text.contains("value from the environment"),
        "{text}"
    );
}

#[test]
fn defaults_and_interpolation() {
    let snippet = r#"[web_services.erp]
url = "${ERP_HOST:-https://erp.example.com}/fetch"
shipping_url = "https://erp.example.com/ship?x=$$1"
"#;
    let plan = compile_texts(
        &[("mappings/base.toml", BASE), ("mappings/crm.toml", snippet)],
        &env(),
        recsync::connectors::KINDS,
    )
    .unwrap();
    let rest = plan.web_services["erp"]
        .settings::<recsync::connectors::rest::spec::RestService>()
        .unwrap();
    let url = rest.url.as_ref().unwrap();
    assert_eq!(url.expose(), "https://erp.example.com/fetch");
    assert!(url.is_secret());
    assert_eq!(url.to_string(), "[from environment]");
    assert_eq!(
        rest.shipping_url.as_ref().unwrap().expose(),
        "https://erp.example.com/ship?x=$1"
    );
}

#[test]
fn a_misspelt_field_type_gives_one_error_not_a_cascade() {
    check(
        "misspelt type, no follow-on errors",
        r#"[models.lead]
display = "name"
fields = { name = "chr", email = "char" }

[syncs.LEAD]
model = "lead"
external_model = "crm_contact"
web_service = "crm"
direction = "to_local"
mode = "realtime"
external_ref = "unique_id"
domain = [["name", "!=", false]]
fields = [{ local = "name", external = "full_name" }]
"#,
        "
error: unknown field type `chr`
 --> mappings/crm.toml:3:19
  |
3 | fields = { name = \"chr\", email = \"char\" }
  |                   ^^^^^ unknown field type
  |
  = help: did you mean `char`?

error: configuration has 1 error",
    );
}

#[test]
fn an_auth_key_is_suggested_from_the_chosen_mode() {
    // `tokn` is close to `token`, which mode `api_key` does not take: no such suggestion.
    check(
        "auth key did-you-mean by mode",
        r#"[web_services.other]
shipping_url = "http://crm.example/ship"
auth = { mode = "api_key", kye = "k", tokn = "t" }
"#,
        "
error: missing field `key` in `auth` with mode `api_key`
 --> mappings/crm.toml:3:8
  |
3 | auth = { mode = \"api_key\", kye = \"k\", tokn = \"t\" }
  |        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ `key` is required

error: unknown field `kye`
 --> mappings/crm.toml:3:28
  |
3 | auth = { mode = \"api_key\", kye = \"k\", tokn = \"t\" }
  |                            ^^^ unknown field
  |
  = help: did you mean `key`?

error: unknown field `tokn`
 --> mappings/crm.toml:3:39
  |
3 | auth = { mode = \"api_key\", kye = \"k\", tokn = \"t\" }
  |                                       ^^^^ unknown field
  |
  = help: expected one of `mode`, `header`, `key`, `description`

error: configuration has 3 errors",
    );
}

#[test]
fn transforms_that_compile_are_valid() {
    assert_eq!(
        errors_of(&sync(
            r#"fields = [
  { local = "name", to_local = "[external.full_name, external.status] | select | join(' ')" },
  { external = "full_name", to_external = "local.name | upper" },
  { local = "visits", external = "status", to_local = "value | int", to_external = "value ~ ''" },
]
"#
        )),
        "(valid)"
    );
}

#[test]
fn transform_syntax_error_is_placed_inside_the_string() {
    check(
        "transform_syntax",
        &sync(
            r#"fields = [{ local = "name", external = "full_name", to_local = "value | ", to_external = "value" }]
"#,
        ),
        r#"
error: to_local in `value | `: syntax error: unexpected end of input, expected identifier
 --> mappings/crm.toml:8:71
  |
8 | fields = [{ local = "name", external = "full_name", to_local = "value | ", to_external = "value" }]
  |                                                                       ^ here

error: configuration has 1 error"#,
    );
}

#[test]
fn transform_unknown_names_and_filters_say_what_they_meant() {
    check(
        "transform_names",
        &sync(
            r#"fields = [
  { local = "name", to_local = "[external.ful_name, external.status] | selct | join(' ')" },
  { external = "full_name", to_external = "local.nme ~ vlaue" },
]
"#,
        ),
        r#"
error: to_local in `[external.ful_name, external.status] | selct | join(' ')`: unknown field `ful_name` on external model `crm_contact`
 --> mappings/crm.toml:9:43
  |
9 |   { local = "name", to_local = "[external.ful_name, external.status] | selct | join(' ')" },
  |                                           ^^^^^^^^ not a field of external model `crm_contact`
  |
  = help: did you mean `full_name`?

error: to_local in `[external.ful_name, external.status] | selct | join(' ')`: unknown filter `selct`
 --> mappings/crm.toml:9:72
  |
9 |   { local = "name", to_local = "[external.ful_name, external.status] | selct | join(' ')" },
  |                                                                        ^^^^^ not a filter
  |
  = help: did you mean `select`?

error: to_external in `local.nme ~ vlaue`: unknown field `nme` on model `contact`
  --> mappings/crm.toml:10:50
   |
10 |   { external = "full_name", to_external = "local.nme ~ vlaue" },
   |                                                  ^^^ not a field of model `contact`
   |
   = help: did you mean `name`?

error: to_external in `local.nme ~ vlaue`: unknown name `vlaue`
  --> mappings/crm.toml:10:56
   |
10 |   { external = "full_name", to_external = "local.nme ~ vlaue" },
   |                                                        ^^^^^ not a name an expression can read
   |
   = help: did you mean `value`?

error: configuration has 4 errors"#,
    );
}

#[test]
fn transform_two_way_pair_needs_both_expressions() {
    check(
        "transform_two_way",
        &sync(
            r#"fields = [
  { local = "name", external = "full_name", to_local = "value | trim" },
  { local = "email", external = "email", direction = "to_local", to_local = "value", to_external = "value" },
  { local = "visits", to_external = "local.visits" },
  { local = "stage", external = "status", to_local = "value", to_external = "value", map = { lead = "L" } },
]
"#,
        ),
        r#"
error: two-way pair `name` <-> `full_name` has `to_local` but no `to_external`
 --> mappings/crm.toml:9:56
  |
9 |   { local = "name", external = "full_name", to_local = "value | trim" },
  |                                                        ^^^^^^^^^^^^^^ one direction only
  |
  = help: add `to_external` with the inverse expression, or set direction = "to_local"

error: `to_external` is never used: the pair goes `to_local` only
  --> mappings/crm.toml:10:100
   |
10 |   { local = "email", external = "email", direction = "to_local", to_local = "value", to_external = "value" },
   |                                                                                                    ^^^^^^^ never used
   |
   = help: remove it, or widen the pair's `direction`

error: a computed local field (no `external`) needs `to_local`
  --> mappings/crm.toml:11:3
   |
11 |   { local = "visits", to_external = "local.visits" },
   |   ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ no `to_local` expression

error: a computed local field (no `external`) only goes to_local, so `to_external` has nothing to write
  --> mappings/crm.toml:11:37
   |
11 |   { local = "visits", to_external = "local.visits" },
   |                                     ^^^^^^^^^^^^^^ never used
   |
   = help: pair both fields (`local` and `external`) to write it the other way too

error: a field pair takes `map` or an expression, not both
  --> mappings/crm.toml:12:92
   |
12 |   { local = "stage", external = "status", to_local = "value", to_external = "value", map = { lead = "L" } },
   |                                                                                            ^^^^^^^^^^^^^^ a value table
   |
   = help: write the table in the expression, or drop `to_local`/`to_external`

error: configuration has 5 errors"#,
    );
}

#[test]
fn transform_reads_only_what_its_direction_has() {
    check(
        "transform_direction_names",
        &sync(
            r#"fields = [
  { local = "name", to_local = "local.email ~ value" },
]
"#,
        ),
        r#"
error: to_local in `local.email ~ value`: `local` cannot be read here
 --> mappings/crm.toml:9:39
  |
9 |   { local = "name", to_local = "local.email ~ value" },
  |                                       ^^^^^ not available in this direction
  |
  = help: `to_local` computes from the external record: read `external.<field>` or `value`

error: to_local in `local.email ~ value`: `value` is not defined here
 --> mappings/crm.toml:9:47
  |
9 |   { local = "name", to_local = "local.email ~ value" },
  |                                               ^^^^^ no source field
  |
  = help: `value` is the paired field's value; a computed field reads `external.<field>`

error: configuration has 2 errors"#,
    );
}

/// The one-line summary (the serve log's, on a hot reload) names the same line and column as
/// the rendered diagnostic (`validate`).
#[test]
fn the_summary_and_the_rendering_agree_on_positions() {
    for snippet in [
        "[syncs.CON\nmodel = \"contact\"\n",
        "[models.lead\n",
        "x = \"é\" = 3\n",
        "[models.lead]\nfields = { name = \"char\" \n",
    ] {
        let Err(e) = compile_texts(
            &[("mappings/base.toml", BASE), ("mappings/crm.toml", snippet)],
            &env(),
            recsync::connectors::KINDS,
        ) else {
            panic!("{snippet:?} is invalid");
        };
        let rendered = e.render();
        for line in e.summary() {
            let (at, _) = line.split_once(": ").expect("path:line:col: message");
            assert!(
                rendered.contains(&format!("--> {at}\n")),
                "{snippet:?}: the summary says {at}, the rendering:\n{rendered}"
            );
        }
    }
}

#[test]
fn signing_secret_that_is_not_a_standard_webhooks_secret() {
    check(
        "signing_secret",
        &sync(
            "inbound_signing_secret = \"whsec_not base64!\"\nfields = [{ local = \"name\", external = \"full_name\" }]\n",
        ),
        r#"
error: invalid `inbound_signing_secret`: a Standard Webhooks secret is `whsec_` followed by base64
 --> mappings/crm.toml:8:26
  |
8 | inbound_signing_secret = "whsec_not base64!"
  |                          ^^^^^^^^^^^^^^^^^^^ not a Standard Webhooks secret

error: configuration has 1 error"#,
    );
}

#[test]
fn an_invalid_direction_does_not_hide_the_field_pairs_mistakes() {
    let snippet = format!(
        "{}fields = [{{ local = \"nope\", external = \"full_name\" }}]\n",
        SYNC_HEAD.replace("direction = \"bidirectional\"", "direction = \"sideways\"")
    );
    check(
        "invalid_direction_and_pairs",
        &snippet,
        r#"
error: invalid `direction` value `sideways`
 --> mappings/crm.toml:5:13
  |
5 | direction = "sideways"
  |             ^^^^^^^^^^ not a direction
  |
  = help: expected one of `to_external`, `to_local`, `bidirectional`

error: unknown field `nope` on model `contact`
 --> mappings/crm.toml:8:21
  |
8 | fields = [{ local = "nope", external = "full_name" }]
  |                     ^^^^^^ not a field of this model
  |
  = help: expected one of `company`, `customer`, `email`, `name`, `stage`, `visits`

error: configuration has 2 errors"#,
    );
}
