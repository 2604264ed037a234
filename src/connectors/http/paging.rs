//! Pages of an `http` resource, without I/O: the first request's URL, where a page's records
//! are, and which URL the next page is at (`connectors.md` §3). Unit-tested against fixed
//! pages in every style.

use super::spec::{HttpList, Paginate};
use serde_json::Value;
use std::collections::HashMap;
use url::Url;

/// One page as it came back.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub url: Url,
    pub body: Value,
    /// The `Link` header, if any.
    pub link: Option<String>,
    /// A hash of the body, to tell a page served again.
    pub hash: u64,
}

/// `base_url` joined with a resource path: `https://h/api/v2` and `/tickets` give
/// `https://h/api/v2/tickets`.
pub fn join(base: &str, path: &str) -> Result<Url, String> {
    let text = format!("{}{}", base.trim_end_matches('/'), path);
    Url::parse(&text).map_err(|e| format!("`{path}` does not make a URL with `base_url`: {e}"))
}

/// The text `{cursor}` is replaced by: a string as it is, a number in JSON.
pub fn cursor_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The URL of the first page: the path, and the query with `{limit}` and `{cursor}` filled in
/// (percent-encoded). A parameter naming `{cursor}` is left out while there is none.
pub fn first_url(
    base: &str,
    list: &HttpList,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Url, String> {
    let mut url = join(base, &list.path)?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in &list.query {
            if v.contains("{cursor}") && cursor.is_none() {
                continue;
            }
            let filled = v
                .replace("{limit}", &limit.to_string())
                .replace("{cursor}", cursor.unwrap_or(""));
            q.append_pair(k, &filled);
        }
        match &list.paginate {
            Paginate::Offset { param, start } | Paginate::Page { param, start } => {
                q.append_pair(param, &start.to_string());
            }
            _ => {}
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

/// `url` with the query parameter `name` set to `value` (replaced where it was).
pub fn with_param(url: &Url, name: &str, value: &str) -> Url {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut out = url.clone();
    out.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(name, value);
    out
}

/// The records of a page. `$.x[*]` must find a list at `$.x` (which may be empty); any other
/// path must match something.
pub fn records(list: &HttpList, body: &mut Value) -> Result<Vec<Value>, String> {
    let text = list.records.as_str();
    if let Some(parent) = text.strip_suffix("[*]")
        && let Ok(p) = crate::domain::JsonPath::parse(parent)
        && p.is_member_chain()
    {
        let found = p.select_mut(body);
        return match found {
            Some(Value::Array(items)) => Ok(std::mem::take(items)),
            Some(other) => Err(format!(
                "`{parent}` is {} in the page, not a list, so `{text}` finds no records",
                kind(other)
            )),
            None => Err(format!(
                "the JSONPath `{text}` matches nothing in the page (it has no `{parent}`)"
            )),
        };
    }
    let found: Vec<Value> = list.records.select(body).into_iter().cloned().collect();
    if found.is_empty() {
        return Err(format!("the JSONPath `{text}` matches nothing in the page"));
    }
    Ok(found)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The `rel="next"` target of an RFC 8288 `Link` header.
pub fn link_next(header: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        // The parameters run to the next link (a comma outside quotes) or the end.
        let mut end = after.len();
        let mut quoted = false;
        for (i, c) in after.char_indices() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let params = &after[..end];
        for p in params.split(';') {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("rel")
                && v.trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
            {
                return Some(target.to_string());
            }
        }
        rest = &after[end..];
    }
    None
}

/// Whether two URLs have the same scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A URL a page named, resolved against the page's own and checked to stay on the service's
/// host.
fn followed(base: &Url, page: &Url, target: &str) -> Result<Url, String> {
    let url = page
        .join(target)
        .map_err(|e| format!("the next page's address `{target}` is not a URL: {e}"))?;
    if !same_origin(base, &url) {
        return Err(format!(
            "the next page is at {}, another host than the web service's {}; only the configured host is followed",
            crate::connectors::rest::origin(url.as_str()),
            crate::connectors::rest::origin(base.as_str()),
        ));
    }
    Ok(url)
}

/// Whether a `done` path says this is the last page.
fn says_done(done: &Option<crate::domain::JsonPath>, body: &Value) -> bool {
    done.as_ref().is_some_and(|p| {
        p.select(body)
            .first()
            .is_some_and(|v| **v == Value::Bool(true))
    })
}

/// A token or URL a page gives, if any (null, `false` and `""` mean none).
fn named(path: &crate::domain::JsonPath, body: &Value) -> Result<Option<String>, String> {
    match path.select(body).first() {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "`{}` is {} in the page, not a string",
            path.as_str(),
            kind(other)
        )),
    }
}

/// Follows the pages of one listing: which comes next, and when to stop.
#[derive(Debug)]
pub struct Paging {
    base: Url,
    /// Pages read so far.
    pub pages: usize,
    /// Every URL asked, with its page number, to stop on one asked again.
    asked: HashMap<String, usize>,
    previous_hash: Option<u64>,
    offset: u64,
    page_no: u64,
}

impl Paging {
    pub fn new(base: &str, list: &HttpList) -> Result<Paging, String> {
        let base = Url::parse(base).map_err(|e| format!("`base_url` is not a URL: {e}"))?;
        let (offset, page_no) = match &list.paginate {
            Paginate::Offset { start, .. } => (*start, 0),
            Paginate::Page { start, .. } => (0, *start),
            _ => (0, 0),
        };
        Ok(Paging {
            base,
            pages: 0,
            asked: HashMap::new(),
            previous_hash: None,
            offset,
            page_no,
        })
    }

    /// Takes up a listing at page `page`, which is at `url` (the offset or page number is read
    /// back from it).
    pub fn resume(&mut self, list: &HttpList, page: usize, url: &Url) {
        self.pages = page.saturating_sub(1);
        let read = |param: &str| {
            url.query_pairs()
                .find(|(k, _)| k == param)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        match &list.paginate {
            Paginate::Offset { param, .. } => self.offset = read(param).unwrap_or(self.offset),
            Paginate::Page { param, .. } => self.page_no = read(param).unwrap_or(self.page_no),
            _ => {}
        }
    }

    /// Notes that `url` is about to be asked as the next page: an error if it was asked before
    /// or if it passes `max_pages`.
    pub fn ask(&mut self, list: &HttpList, url: &Url) -> Result<(), String> {
        let n = self.pages + 1;
        if n > list.max_pages {
            return Err(format!(
                "page {n} passes `max_pages` = {}; the run stops",
                list.max_pages
            ));
        }
        if let Some(first) = self.asked.insert(url.to_string(), n) {
            return Err(format!(
                "page {n} repeats page {first} (the service named the same page again: {})",
                url.path()
            ));
        }
        Ok(())
    }

    /// After page `fetched` with `count` records: the next page's URL, or `None` at the end.
    pub fn next(
        &mut self,
        list: &HttpList,
        limit: usize,
        fetched: &Fetched,
        count: usize,
    ) -> Result<Option<Url>, String> {
        self.pages += 1;
        let n = self.pages;
        if count > 0 && self.previous_hash == Some(fetched.hash) {
            return Err(format!(
                "page {n} is the same as page {} (does the service ignore the pagination parameter?)",
                n - 1
            ));
        }
        self.previous_hash = Some(fetched.hash);
        let uses_limit = list.query.iter().any(|(_, v)| v.contains("{limit}"));
        let short = count == 0 || (uses_limit && count < limit);
        let body = &fetched.body;
        let next = match &list.paginate {
            Paginate::None => None,
            Paginate::NextUrl { next, done } => {
                if says_done(done, body) || count == 0 {
                    None
                } else {
                    match named(next, body)? {
                        None => None,
                        Some(target) => Some(followed(&self.base, &fetched.url, &target)?),
                    }
                }
            }
            Paginate::Cursor { param, next, done } => {
                if says_done(done, body) {
                    None
                } else {
                    named(next, body)?.map(|token| with_param(&fetched.url, param, &token))
                }
            }
            Paginate::Offset { param, .. } => {
                if short {
                    None
                } else {
                    self.offset += count as u64;
                    Some(with_param(&fetched.url, param, &self.offset.to_string()))
                }
            }
            Paginate::Page { param, .. } => {
                if short {
                    None
                } else {
                    self.page_no += 1;
                    Some(with_param(&fetched.url, param, &self.page_no.to_string()))
                }
            }
            Paginate::LinkHeader => match fetched.link.as_deref().and_then(link_next) {
                None => None,
                Some(target) => Some(followed(&self.base, &fetched.url, &target)?),
            },
        };
        Ok(next)
    }
}

/// A hash of a page's text.
pub fn hash_text(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JsonPath;
    use serde_json::json;

    const BASE: &str = "https://api.example.com/v2";

    fn list(paginate: Paginate, query: &[(&str, &str)]) -> HttpList {
        HttpList {
            path: "/items".into(),
            records: JsonPath::parse("$.items[*]").unwrap(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cursor_field: None,
            cursor_start: None,
            paginate,
            deleted: None,
            max_pages: 100_000,
        }
    }

    fn page(url: &Url, body: Value, link: Option<&str>) -> Fetched {
        Fetched {
            url: url.clone(),
            hash: hash_text(&body.to_string()),
            body,
            link: link.map(str::to_string),
        }
    }

    fn items(n: usize, from: usize) -> Vec<Value> {
        (from..from + n).map(|i| json!({"id": i})).collect()
    }

    /// Reads a whole listing from `serve` (URL to page), as the connector does.
    fn walk(
        l: &HttpList,
        limit: usize,
        serve: impl Fn(&Url) -> Fetched,
    ) -> Result<Vec<String>, String> {
        let mut paging = Paging::new(BASE, l)?;
        let mut url = first_url(BASE, l, limit, None)?;
        let mut asked = Vec::new();
        loop {
            paging.ask(l, &url)?;
            asked.push(url.to_string());
            let mut f = serve(&url);
            let mut body = f.body.clone();
            let count = records(l, &mut body)?.len();
            f.body = f.body.clone();
            match paging.next(l, limit, &f, count)? {
                Some(u) => url = u,
                None => return Ok(asked),
            }
        }
    }

    #[test]
    fn the_first_url_fills_limit_and_cursor_and_leaves_out_a_cursor_not_yet_known() {
        let l = list(
            Paginate::None,
            &[
                ("per_page", "{limit}"),
                ("updated_since", "{cursor}"),
                ("sort", "asc"),
            ],
        );
        let u = first_url(BASE, &l, 50, None).unwrap();
        assert_eq!(
            u.as_str(),
            "https://api.example.com/v2/items?per_page=50&sort=asc"
        );
        let u = first_url(BASE, &l, 50, Some("2024-01-01T00:00:00+01:00")).unwrap();
        assert_eq!(
            u.as_str(),
            "https://api.example.com/v2/items?per_page=50&updated_since=2024-01-01T00%3A00%3A00%2B01%3A00&sort=asc"
        );
        let bare = list(Paginate::None, &[]);
        assert_eq!(
            first_url(BASE, &bare, 1, None).unwrap().as_str(),
            "https://api.example.com/v2/items"
        );
    }

    #[test]
    fn next_url_pages_follow_the_named_url_until_it_is_null() {
        let l = list(
            Paginate::NextUrl {
                next: JsonPath::parse("$.next_page").unwrap(),
                done: None,
            },
            &[("per_page", "{limit}")],
        );
        let asked = walk(&l, 2, |u| {
            let p: usize = u
                .query_pairs()
                .find(|(k, _)| k == "p")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(1);
            let next = (p < 3).then(|| format!("/v2/items?per_page=2&p={}", p + 1));
            page(
                u,
                json!({"items": items(2, p * 10), "next_page": next}),
                None,
            )
        })
        .unwrap();
        assert_eq!(asked.len(), 3, "{asked:?}");
        assert!(asked[2].ends_with("p=3"));
    }

    #[test]
    fn a_done_flag_ends_next_url_pages_even_when_a_next_page_is_named() {
        let l = list(
            Paginate::NextUrl {
                next: JsonPath::parse("$.next_page").unwrap(),
                done: Some(JsonPath::parse("$.end_of_stream").unwrap()),
            },
            &[],
        );
        let asked = walk(&l, 2, |u| {
            let last = u.query().is_some_and(|q| q.contains("t=2"));
            let next = format!("{BASE}/items?t={}", if last { 3 } else { 2 });
            page(
                u,
                json!({"items": items(1, 0), "next_page": next, "end_of_stream": last}),
                None,
            )
        })
        .unwrap();
        assert_eq!(asked.len(), 2);
    }

    #[test]
    fn cursor_pages_send_the_token_back_until_there_is_none() {
        let l = list(
            Paginate::Cursor {
                param: "after".into(),
                next: JsonPath::parse("$.paging.next.after").unwrap(),
                done: None,
            },
            &[("limit", "{limit}")],
        );
        let asked = walk(&l, 2, |u| {
            let after = u
                .query_pairs()
                .find(|(k, _)| k == "after")
                .map(|(_, v)| v.into_owned());
            let body = match after.as_deref() {
                None => json!({"items": items(2, 0), "paging": {"next": {"after": "Mg=="}}}),
                Some("Mg==") => {
                    json!({"items": items(2, 2), "paging": {"next": {"after": "NA=="}}})
                }
                _ => json!({"items": items(1, 4)}),
            };
            page(u, body, None)
        })
        .unwrap();
        assert_eq!(
            asked,
            vec![
                "https://api.example.com/v2/items?limit=2",
                "https://api.example.com/v2/items?limit=2&after=Mg%3D%3D",
                "https://api.example.com/v2/items?limit=2&after=NA%3D%3D",
            ]
        );
    }

    #[test]
    fn offset_and_page_styles_count_until_a_short_page() {
        let serve = |key: &'static str, per: usize| {
            move |u: &Url| {
                let at: usize = u
                    .query_pairs()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap();
                let from = if key == "offset" { at } else { (at - 1) * per };
                let n = 5usize.saturating_sub(from).min(per);
                page(u, json!({"items": items(n, from)}), None)
            }
        };
        let off = list(
            Paginate::Offset {
                param: "offset".into(),
                start: 0,
            },
            &[("limit", "{limit}")],
        );
        let asked = walk(&off, 2, serve("offset", 2)).unwrap();
        assert_eq!(asked.len(), 3);
        assert!(
            asked[1].ends_with("offset=2") && asked[2].ends_with("offset=4"),
            "{asked:?}"
        );
        let pg = list(
            Paginate::Page {
                param: "page".into(),
                start: 1,
            },
            &[("per_page", "{limit}")],
        );
        let asked = walk(&pg, 2, serve("page", 2)).unwrap();
        assert_eq!(asked.len(), 3);
        assert!(asked[2].ends_with("page=3"), "{asked:?}");
        // Five records, five per page: a full page, then an empty one that ends it.
        let asked = walk(&pg, 5, serve("page", 5)).unwrap();
        assert_eq!(asked.len(), 2);
    }

    #[test]
    fn link_headers_give_the_next_page_as_github_sends_them() {
        let h = r#"<https://api.example.com/v2/items?page=2>; rel="next", <https://api.example.com/v2/items?page=5>; rel="last""#;
        assert_eq!(
            link_next(h).as_deref(),
            Some("https://api.example.com/v2/items?page=2")
        );
        let h = r#"<https://a/x?page=1>; rel="prev first", <https://a/x?page=3>; title="a, b"; rel="next""#;
        assert_eq!(link_next(h).as_deref(), Some("https://a/x?page=3"));
        assert_eq!(link_next(r#"<https://a/x?page=1>; rel="prev""#), None);
        let mut l = list(Paginate::LinkHeader, &[]);
        l.records = JsonPath::parse("$[*]").unwrap();
        let asked = walk(&l, 2, |u| {
            let p: usize = u
                .query_pairs()
                .find(|(k, _)| k == "page")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(1);
            let link = (p < 4).then(|| format!("<{BASE}/items?page={}>; rel=\"next\"", p + 1));
            page(u, json!(items(2, p * 2)), link.as_deref())
        })
        .unwrap();
        assert_eq!(asked.len(), 4);
    }

    #[test]
    fn a_page_served_again_or_past_max_pages_stops_with_the_page_named() {
        let l = list(
            Paginate::NextUrl {
                next: JsonPath::parse("$.next").unwrap(),
                done: None,
            },
            &[],
        );
        let e = walk(&l, 2, |u| {
            page(
                u,
                json!({"items": items(1, 0), "at": u.as_str(), "next": "/v2/items?again"}),
                None,
            )
        })
        .unwrap_err();
        assert!(e.contains("page 3 repeats page 2"), "{e}");
        let ignores = list(
            Paginate::Page {
                param: "page".into(),
                start: 1,
            },
            &[],
        );
        let e = walk(&ignores, 2, |u| {
            page(u, json!({"items": items(2, 0)}), None)
        })
        .unwrap_err();
        assert!(e.contains("page 2 is the same as page 1"), "{e}");
        let mut capped = list(
            Paginate::Offset {
                param: "offset".into(),
                start: 0,
            },
            &[],
        );
        capped.max_pages = 3;
        let e = walk(&capped, 2, |u| {
            let at: usize = u
                .query_pairs()
                .find(|(k, _)| k == "offset")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap();
            page(u, json!({"items": items(2, at)}), None)
        })
        .unwrap_err();
        assert!(e.contains("page 4 passes `max_pages` = 3"), "{e}");
    }

    #[test]
    fn a_next_page_on_another_host_is_refused() {
        let l = list(
            Paginate::NextUrl {
                next: JsonPath::parse("$.next").unwrap(),
                done: None,
            },
            &[],
        );
        let e = walk(&l, 2, |u| {
            page(
                u,
                json!({"items": items(1, 0), "next": "https://evil.example.net/v2/items?p=2"}),
                None,
            )
        })
        .unwrap_err();
        assert!(
            e.contains("https://evil.example.net") && e.contains("only the configured host"),
            "{e}"
        );
        let e = walk(&list(Paginate::LinkHeader, &[]), 2, |u| {
            page(
                u,
                json!({"items": items(1, 0)}),
                Some("<http://api.example.com/v2/items?page=2>; rel=\"next\""),
            )
        })
        .unwrap_err();
        assert!(
            e.contains("another host"),
            "a change of scheme is another origin: {e}"
        );
    }

    #[test]
    fn records_are_found_or_the_path_is_named() {
        let l = list(Paginate::None, &[]);
        assert_eq!(records(&l, &mut json!({"items": []})).unwrap().len(), 0);
        assert_eq!(
            records(&l, &mut json!({"items": [{"id": 1}, {"id": 2}]}))
                .unwrap()
                .len(),
            2
        );
        let e = records(&l, &mut json!({"tickets": []})).unwrap_err();
        assert!(e.contains("`$.items[*]` matches nothing"), "{e}");
        let e = records(&l, &mut json!({"items": {"id": 1}})).unwrap_err();
        assert!(e.contains("an object"), "{e}");
        let mut bare = list(Paginate::None, &[]);
        bare.records = JsonPath::parse("$[*]").unwrap();
        assert_eq!(records(&bare, &mut json!([{"id": 1}])).unwrap().len(), 1);
        let mut filtered = list(Paginate::None, &[]);
        filtered.records = JsonPath::parse("$.items[?@.kind == 'a']").unwrap();
        let got = records(
            &filtered,
            &mut json!({"items": [{"kind": "a"}, {"kind": "b"}]}),
        )
        .unwrap();
        assert_eq!(got, vec![json!({"kind": "a"})]);
        assert!(records(&filtered, &mut json!({"items": [{"kind": "b"}]})).is_err());
    }
}
