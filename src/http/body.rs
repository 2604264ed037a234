//! Request bodies: read with a size limit, then parsed tolerantly (JSON object, JSON-RPC
//! `params` envelope, or form-encoded pairs whatever the Content-Type says).

use actix_web::web;
use futures_util::StreamExt;
use serde_json::{Map, Value};

/// Why a body could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    TooLarge(usize),
    Unreadable(String),
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub async fn read_limited(
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, BodyError> {
    if let Some(len) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| BodyError::Unreadable("the body could not be read".into()))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses field values from a JSON object, a JSON-RPC envelope, or a form-encoded body.
/// Does a value hold a NUL character (U+0000) in a string or a key? Such text cannot be stored
/// (PostgreSQL refuses it in text and JSON), so it is refused at the door on every backend.
pub fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// The refusal of a NUL character.
pub const NUL_REFUSED: &str =
    "the body contains a NUL character (U+0000), which recsync does not store";

pub fn parse_values(bytes: &[u8]) -> Result<Map<String, Value>, BodyError> {
    let values = parse_values_inner(bytes)?;
    if values
        .iter()
        .any(|(k, v)| k.contains('\0') || contains_nul(v))
    {
        return Err(BodyError::Unreadable(NUL_REFUSED.into()));
    }
    Ok(values)
}

fn parse_values_inner(bytes: &[u8]) -> Result<Map<String, Value>, BodyError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| BodyError::Unreadable("the body is not UTF-8 text".into()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(BodyError::Unreadable("the body is empty".into()));
    }
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(trimmed).map_err(|e| {
            BodyError::Unreadable(format!(
                "the body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let Value::Object(obj) = v else {
            return Err(BodyError::Unreadable(
                "the JSON body must be an object of field values".into(),
            ));
        };
        if obj.contains_key("jsonrpc")
            || (obj.len() <= 3 && obj.get("params").is_some_and(Value::is_object))
        {
            return match obj.get("params") {
                Some(Value::Object(params)) => Ok(params.clone()),
                _ => Err(BodyError::Unreadable(
                    "the JSON-RPC envelope has no `params` object".into(),
                )),
            };
        }
        return Ok(obj);
    }
    // Form-encoded: every segment must be `key=value` with a non-empty key.
    let mut out = Map::new();
    for seg in trimmed.split('&').filter(|s| !s.is_empty()) {
        if !seg.contains('=') || seg.starts_with('=') {
            return Err(BodyError::Unreadable(
                "the body is neither JSON nor form-encoded `key=value` pairs".into(),
            ));
        }
    }
    for (k, v) in url::form_urlencoded::parse(trimmed.as_bytes()) {
        out.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    if out.is_empty() {
        return Err(BodyError::Unreadable(
            "the body holds no field values".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn three_shapes() {
        assert_eq!(
            parse_values(br#"{"name":"A","unique_id":748600007347569543}"#).unwrap()["unique_id"]
                .to_string(),
            "748600007347569543"
        );
        assert_eq!(
            parse_values(br#"{"jsonrpc":"2.0","params":{"name":"B"}}"#).unwrap()["name"],
            json!("B")
        );
        let form = parse_values(b"name=Name+X&unique_id=1231&city=M%C3%A1laga").unwrap();
        assert_eq!(form["name"], json!("Name X"));
        assert_eq!(form["unique_id"], json!("1231"));
        assert_eq!(form["city"], json!("Málaga"));
    }

    #[test]
    fn unreadable_bodies() {
        assert!(matches!(
            parse_values(b"{not json"),
            Err(BodyError::Unreadable(_))
        ));
        assert!(matches!(
            parse_values(b"[1,2]"),
            Err(BodyError::Unreadable(_))
        ));
        assert!(matches!(
            parse_values(b"just some words"),
            Err(BodyError::Unreadable(_))
        ));
        assert!(matches!(parse_values(b""), Err(BodyError::Unreadable(_))));
        assert!(matches!(
            parse_values(&[0xff, 0xfe]),
            Err(BodyError::Unreadable(_))
        ));
        assert!(matches!(
            parse_values(br#"{"jsonrpc":"2.0","params":[1]}"#),
            Err(BodyError::Unreadable(_))
        ));
    }
}
