//! Standard Webhooks for the reference peer, written here apart from recsync's own (a fake
//! that shared recsync's code could agree with it on a mistake): `v1,` and the base64
//! HMAC-SHA256 of `<webhook-id>.<webhook-timestamp>.<body>` with the key of a `whsec_` secret.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn key(secret: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .expect("the peer's signing secret is whsec_ and base64")
}

fn mac(secret: &str, id: &str, ts: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(&key(secret)).expect("any key length");
    m.update(format!("{id}.{ts}.").as_bytes());
    m.update(body);
    m
}

/// The three headers a signed call carries.
pub fn headers(secret: &str, body: &[u8]) -> [(&'static str, String); 3] {
    let id = format!("msg_peer_{}", hex::encode(rand::random::<[u8; 12]>()));
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = base64::engine::general_purpose::STANDARD
        .encode(mac(secret, &id, &ts, body).finalize().into_bytes());
    [
        ("webhook-id", id),
        ("webhook-timestamp", ts),
        ("webhook-signature", format!("v1,{sig}")),
    ]
}

/// Whether a call is signed with `secret`, within five minutes.
pub fn verified(secret: &str, req: &actix_web::HttpRequest, body: &[u8]) -> bool {
    let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sigs)) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(at) = ts.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - at).abs() > 300 {
        return false;
    }
    sigs.split(' ').any(|s| {
        s.strip_prefix("v1,")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .is_some_and(|sig| mac(secret, id, ts, body).verify_slice(&sig).is_ok())
    })
}
