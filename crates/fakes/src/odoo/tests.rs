use super::*;

fn state() -> OdooState {
    let s = OdooState {
        opts: OdooOptions::default(),
        inner: Mutex::new(Inner::default()),
    };
    s.seed();
    s
}

fn search_names(s: &OdooState, domain: Value, context: Value) -> Vec<String> {
    s.with(|i| {
        let ids = search(
            i,
            "res.partner",
            domain.as_array().unwrap(),
            0,
            None,
            Some("name"),
            &context,
        )
        .unwrap();
        ids.iter()
            .map(|id| {
                i.records["res.partner"][id]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    })
}

#[test]
fn domains_are_evaluated_as_odoo_does() {
    let s = state();
    let be = s.with(|i| {
        search(
            i,
            "res.country",
            &[json!(["code", "=", "BE"])],
            0,
            None,
            None,
            &json!({}),
        )
        .unwrap()[0]
    });
    let acme = s.create("res.partner", json!({"name": "Acme", "is_company": true, "country_id": be, "email": "info@ACME.example"})).unwrap();
    s.create(
        "res.partner",
        json!({"name": "Ann", "parent_id": acme, "email": "ann@acme.example"}),
    )
    .unwrap();
    let bob = s
        .create("res.partner", json!({"name": "Bob", "email": false}))
        .unwrap();
    s.set_active("res.partner", bob, false).unwrap();

    assert_eq!(
        search_names(&s, json!([["country_id.code", "=", "BE"]]), json!({})),
        ["Acme"]
    );
    assert_eq!(
        search_names(
            &s,
            json!(["|", ["name", "=", "Ann"], ["is_company", "=", true]]),
            json!({})
        ),
        ["Acme", "Ann"]
    );
    assert_eq!(
        search_names(&s, json!(["!", ["name", "ilike", "a"]]), json!({})),
        Vec::<String>::new()
    );
    assert_eq!(
        search_names(&s, json!([["email", "ilike", "acme"]]), json!({})),
        ["Acme", "Ann"]
    );
    assert_eq!(
        search_names(&s, json!([["email", "=like", "ann@%"]]), json!({})),
        ["Ann"]
    );
    assert_eq!(
        search_names(&s, json!([["id", "child_of", [acme]]]), json!({})),
        ["Acme", "Ann"]
    );
    assert_eq!(
        search_names(&s, json!([["name", "in", ["Ann", "Bob"]]]), json!({})),
        ["Ann"]
    );
    // Archived records only when asked for.
    assert_eq!(
        search_names(
            &s,
            json!([["name", "in", ["Ann", "Bob"]]]),
            json!({"active_test": false})
        ),
        ["Ann", "Bob"]
    );
    assert_eq!(
        search_names(&s, json!([["active", "=", false]]), json!({})),
        ["Bob"]
    );
    assert_eq!(
        search_names(
            &s,
            json!([["parent_id", "=?", false], ["name", "=", "Ann"]]),
            json!({})
        ),
        ["Ann"]
    );
}

#[test]
fn values_are_answered_in_odoo_shapes() {
    let s = state();
    let tags: Vec<i64> = s.records("res.partner.category").keys().copied().collect();
    let id = s
        .create(
            "res.partner",
            json!({"name": "Acme", "country_id": 1, "category_id": [[6, 0, [tags[0], tags[2]]]]}),
        )
        .unwrap();
    let r = s.with(|i| read(i, "res.partner", &[id], &[], false).unwrap())[0].clone();
    let classic = s.with(|i| read(i, "res.partner", &[id], &[], true).unwrap())[0].clone();
    assert_eq!(classic["country_id"], json!(1));
    assert_eq!(r["country_id"], json!([1, "Belgium"]));
    assert_eq!(r["category_id"], json!([tags[0], tags[2]]));
    assert_eq!(r["email"], json!(false));
    assert_eq!(r["parent_id"], json!(false));
    assert_eq!(r["active"], json!(true));
    assert!(
        chrono::NaiveDateTime::parse_from_str(r["write_date"].as_str().unwrap(), DATETIME).is_ok()
    );
    s.write("res.partner", id, json!({"category_id": [[3, tags[0]]]}))
        .unwrap();
    assert_eq!(
        s.records("res.partner")[&id]["category_id"],
        json!([tags[2]])
    );
    let e = s
        .with(|i| {
            call(
                i,
                "res.partner",
                "write",
                &named("write", &[json!([9999]), json!({"name": "x"})], None),
            )
        })
        .unwrap_err();
    assert_eq!(e.name, "odoo.exceptions.MissingError");
    let e = s
        .with(|i| {
            call(
                i,
                "res.partner",
                "create",
                &named("create", &[json!({"email": "x@example.com"})], None),
            )
        })
        .unwrap_err();
    assert_eq!(e.name, "odoo.exceptions.ValidationError");
}

#[test]
fn a_backdated_write_is_stamped_in_the_past() {
    let s = state();
    s.set_faults(OdooFaults {
        backdate_next: 600,
        ..Default::default()
    });
    let id = s.create("res.partner", json!({"name": "Late"})).unwrap();
    let at = s.records("res.partner")[&id]["write_date"]
        .as_str()
        .unwrap()
        .to_string();
    let at = chrono::NaiveDateTime::parse_from_str(&at, DATETIME)
        .unwrap()
        .and_utc();
    assert!(chrono::Utc::now() - at > chrono::Duration::seconds(590));
    let id2 = s.create("res.partner", json!({"name": "On time"})).unwrap();
    let at2 = s.records("res.partner")[&id2]["write_date"]
        .as_str()
        .unwrap()
        .to_string();
    let at2 = chrono::NaiveDateTime::parse_from_str(&at2, DATETIME)
        .unwrap()
        .and_utc();
    assert!(chrono::Utc::now() - at2 < chrono::Duration::seconds(60));
}

#[test]
fn keyset_pages_through_the_index_match_a_full_sort() {
    let s = state();
    s.seed_partners(300);
    // Many records share a write date; some move later, some are deleted or archived.
    s.advance_clock(5);
    for id in [10, 20, 30] {
        s.write("res.partner", id, json!({"email": "later@example.com"}))
            .unwrap();
    }
    s.unlink("res.partner", 40).unwrap();
    s.set_active("res.partner", 50, false).unwrap();
    let page = |domain: Value, order: &str, active: bool| {
        s.with(|i| {
            search(
                i,
                "res.partner",
                domain.as_array().unwrap(),
                0,
                Some(7),
                Some(order),
                &json!({ "active_test": active }),
            )
            .unwrap()
        })
    };
    for active in [true, false] {
        let mut after: Option<(String, i64)> = None;
        let mut seen = Vec::new();
        loop {
            let mut domain = vec![json!(["is_company", "=", false])];
            if let Some((wd, id)) = &after {
                domain.extend([
                    json!("|"),
                    json!(["write_date", ">", wd]),
                    json!("&"),
                    json!(["write_date", "=", wd]),
                    json!(["id", ">", id]),
                ]);
            }
            let fast = page(json!(domain), "write_date asc, id asc", active);
            // Three sort keys: the scan-and-sort path, as a reference.
            let slow = page(json!(domain), "write_date asc, id asc, name", active);
            assert_eq!(fast, slow, "after {after:?}");
            let Some(last) = fast.last() else { break };
            let wd = s.records("res.partner")[last]["write_date"]
                .as_str()
                .unwrap()
                .to_string();
            after = Some((wd, *last));
            seen.extend(fast);
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "no record read twice");
        assert!(!seen.contains(&40), "deleted");
        assert_eq!(
            seen.contains(&50),
            !active,
            "archived only without active_test"
        );
        assert_eq!(
            seen.len(),
            s.records("res.partner")
                .values()
                .filter(|r| r.get("is_company") != Some(&json!(true)))
                .filter(|r| !active || r.get("active") != Some(&json!(false)))
                .count()
        );
    }
}
