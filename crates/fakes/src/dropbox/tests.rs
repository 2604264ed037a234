use super::*;

#[test]
fn signatures_match_the_documented_vector() {
    assert_eq!(
        sign(b"the_secret", br#"{"delta": {"users": [12345]}}"#),
        "0a8c16b085420b960dc78664279fe09e936a2a01b1f91064869d9e77dfd64529"
    );
}

#[test]
fn api_arg_headers_are_ascii() {
    assert_eq!(ascii_json(&json!("é😀")), "\"\\u00e9\\ud83d\\ude00\"");
}

#[test]
fn scope_rules_follow_recursive_and_direct_listing() {
    assert!(Inner::in_scope("/a", true, "/a/b/c"));
    assert!(!Inner::in_scope("/a", false, "/a/b/c"));
    assert!(Inner::in_scope("/a", false, "/a/b"));
    assert!(!Inner::in_scope("/a", true, "/ab"));
    assert!(Inner::in_scope("", false, "/a"));
    assert!(!Inner::in_scope("", false, "/a/b"));
}
