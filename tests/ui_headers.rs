//! The UI's page and files are served with security headers: a Content Security Policy that
//! allows only the page's own scripts and styles (no inline script), no framing, no sniffing.

mod common;

use common::harness::Harness;

#[tokio::test]
async fn the_ui_is_served_with_security_headers() {
    let h = Harness::start().await;
    let r = h.client.get(h.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(header("content-type").starts_with("text/html"));
    let csp = header("content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let page = r.text().await.unwrap();
    // The page itself has no inline script: only the module file.
    assert!(page.contains(r#"<script type="module" src="/ui/app.js"></script>"#));
    assert_eq!(page.matches("<script").count(), 1);
    for (file, ty) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let r = h
            .client
            .get(h.url(&format!("/ui/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ty)
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let r = h
        .client
        .get(h.url("/ui/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "only the UI's own files");
    let r = h.client.get(h.url("/ui/secrets.txt")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    h.stop().await;
}
