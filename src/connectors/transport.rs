//! The transport every HTTP-based kind shares, written once: how a failed call is repeated
//! (exponential backoff with jitter, through `backon`, or the wait the service asked for), how
//! `Retry-After` is read (seconds or an HTTP date), how a failed request is described, how an
//! answer is read within a size limit, and how calls to one web service are admitted (its
//! `max_concurrency`, and its `rate_limit` through `governor`). Each call runs in a
//! `connector.call` span naming the web service and what is called.

use super::Failure;
use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::future::Future;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument;

/// How a kind repeats a failed call inside one call of the engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retries {
    /// Attempts in all, the first included.
    pub attempts: usize,
    /// The first wait; each next one doubles, with jitter.
    pub first: Duration,
    /// The longest wait. A service asking for longer is not waited for here: the failure
    /// goes back to the caller with the wait asked (the outbox, or the next run, honours it).
    pub max_wait: Duration,
}

/// What to do about one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Try again after the wait asked, or the backoff's.
    Again(Option<Duration>),
    /// Give the failure back.
    Stop,
}

impl Retries {
    /// Runs `call` until it succeeds, `verdict` says stop, or the attempts are spent; the last
    /// failure is returned as it is. `web_service` names the service in the log.
    pub async fn run<T, E, F, Fut>(
        &self,
        web_service: &str,
        call: F,
        verdict: impl Fn(&E) -> Verdict,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let max_wait = self.max_wait;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(max_wait)
            .with_max_times(self.attempts.saturating_sub(1))
            .with_jitter();
        call.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| verdict(e) != Verdict::Stop)
            .adjust(|e, next| match (verdict(e), next) {
                // Attempts spent, or a wait longer than this call should hold on.
                (_, None) => None,
                (Verdict::Again(Some(asked)), Some(_)) if asked > max_wait => None,
                (Verdict::Again(Some(asked)), Some(_)) => Some(asked),
                (_, backoff) => backoff,
            })
            .notify(|e, wait| {
                tracing::debug!(web_service, reason = %e, wait_ms = wait.as_millis() as u64, "A call failed; trying again");
            })
            .await
    }
}

/// The verdict on a [`Failure`]: repeated when it is worth it and `repeat` allows.
pub fn verdict(e: &Failure, repeat: bool) -> Verdict {
    if repeat && e.retryable() {
        Verdict::Again(e.retry_after())
    } else {
        Verdict::Stop
    }
}

/// `Retry-After`: seconds, or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// What went wrong with a request that got no answer, in a few words.
pub fn describe(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "the request timed out"
    } else if e.is_connect() {
        "the service could not be reached"
    } else {
        "the request failed"
    }
}

/// A request that got no answer: worth another attempt.
pub fn unanswered(e: reqwest::Error) -> Failure {
    Failure::transient(describe(&e))
}

/// Sends a request in an `http.request` span, with that span's W3C `traceparent` when traces
/// are exported, and signed per Standard Webhooks when the web service has a
/// `signing_secret`: `webhook-id` is `id` (a delivery's idempotency key, the same across its
/// retries) or a new one, `webhook-timestamp` now, `webhook-signature` over the body as sent.
pub async fn send(
    req: reqwest::RequestBuilder,
    signing: Option<&crate::domain::auth::Signing>,
    id: Option<&str>,
) -> Result<reqwest::Response, reqwest::Error> {
    let (client, request) = req.build_split();
    let mut request = request?;
    let span = tracing::info_span!(
        "http.request",
        method = %request.method(),
        host = request.url().host_str().unwrap_or_default(),
        path = request.url().path(),
        status = tracing::field::Empty,
    );
    if let Some(tp) = span.in_scope(crate::telemetry::traceparent)
        && let Ok(v) = reqwest::header::HeaderValue::from_str(&tp)
    {
        request.headers_mut().insert("traceparent", v);
    }
    if let Some(signing) = signing {
        sign(&mut request, signing, id);
    }
    let answer = client.execute(request).instrument(span.clone()).await;
    if let Ok(r) = &answer {
        span.record("status", r.status().as_u16());
    }
    answer
}

/// Adds the Standard Webhooks headers to a request.
fn sign(request: &mut reqwest::Request, signing: &crate::domain::auth::Signing, id: Option<&str>) {
    let id = id.map_or_else(
        || format!("msg_{}", hex::encode(rand::random::<[u8; 16]>())),
        str::to_string,
    );
    let timestamp = chrono::Utc::now().timestamp();
    let body = request
        .body()
        .and_then(|b| b.as_bytes())
        .unwrap_or_default();
    let signature = signing.sign(&id, timestamp, body);
    let headers = request.headers_mut();
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ] {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// Reads an answer's body, refusing one larger than `max` bytes before reading it all.
pub async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Failure> {
    let too_big = || {
        Failure::permanent(format!(
            "the answer is larger than {} MiB",
            max / (1024 * 1024)
        ))
    };
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unanswered)? {
        if body.len() + chunk.len() > max {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How calls to one web service are let through: at most `max_concurrency` at once, and no
/// faster than its `rate_limit`.
pub struct Limits {
    permits: Semaphore,
    rate: Option<DefaultDirectRateLimiter>,
}

impl Limits {
    /// `rate`: so many calls per period. Calls are spaced by the period's share; a burst of
    /// 2 % of the limit lets a moment without calls be made up without any period carrying
    /// more than 2 % over the limit.
    pub fn new(max_concurrency: usize, rate: Option<(u32, Duration)>) -> Limits {
        let rate = rate.map(|(requests, per)| {
            let burst = std::num::NonZeroU32::new((requests / 50).max(1)).expect("at least 1");
            let interval = (per / requests.max(1)).max(Duration::from_nanos(1));
            let quota = Quota::with_period(interval)
                .expect("a positive period")
                .allow_burst(burst);
            RateLimiter::direct(quota)
        });
        Limits {
            permits: Semaphore::new(max_concurrency.max(1)),
            rate,
        }
    }

    /// Waits for a free place, then for the rate limit; the place is held until the permit
    /// drops.
    pub async fn admit(&self) -> SemaphorePermit<'_> {
        let permit = self.permits.acquire().await.expect("never closed");
        if let Some(r) = &self.rate {
            r.until_ready().await;
        }
        permit
    }
}

/// Where a URL points, for people: scheme, host and port always; the rest only when it was
/// written in the mapping as it is (a value built with `${VAR}` may hold a secret: its path is
/// shown as `/…`), and never a password.
pub fn location(url: &crate::domain::plan::ConfigStr) -> String {
    let origin = origin(url.expose());
    if url.is_secret() {
        format!("{origin}/…")
    } else {
        crate::config::settings::mask_url(url.expose())
    }
}

/// A URL as it may be shown: scheme, host and port, with no credentials or path.
pub fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "(not a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn headers(v: &str) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_each_http_date_form() {
        assert_eq!(retry_after(&headers(" 7 ")), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let wait = retry_after(&headers(&httpdate::fmt_http_date(later))).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
        // A date gone by means now; the obsolete forms HTTP still allows are read too.
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:49:37 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&headers("Sunday, 06-Nov-94 08:49:37 GMT")),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&headers("Sun Nov  6 08:49:37 1994")),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers("soon")), None);
    }

    fn quick(attempts: usize) -> Retries {
        Retries {
            attempts,
            first: Duration::from_millis(1),
            max_wait: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn a_transient_failure_is_repeated_until_the_attempts_are_spent() {
        let calls = AtomicUsize::new(0);
        let out: Result<(), Failure> = quick(3)
            .run(
                "svc",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Failure::transient("HTTP 503"))
                },
                |e| verdict(e, true),
            )
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(out.unwrap_err().message(), "HTTP 503");
    }

    #[tokio::test]
    async fn a_permanent_failure_or_a_call_not_to_repeat_is_tried_once() {
        for (failure, repeat) in [
            (Failure::permanent("HTTP 400"), true),
            (Failure::transient("HTTP 503"), false),
        ] {
            let calls = AtomicUsize::new(0);
            let out: Result<(), Failure> = quick(5)
                .run(
                    "svc",
                    || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Err(failure.clone())
                    },
                    |e| verdict(e, repeat),
                )
                .await;
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{failure:?}");
            assert_eq!(out.unwrap_err(), failure);
        }
    }

    #[tokio::test]
    async fn a_wait_asked_longer_than_the_longest_goes_back_to_the_caller() {
        let calls = AtomicUsize::new(0);
        let asked = Failure::RateLimited {
            retry_after: Some(Duration::from_secs(3600)),
            message: "HTTP 429".into(),
        };
        let started = std::time::Instant::now();
        let out: Result<(), Failure> = quick(5)
            .run(
                "svc",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(asked.clone())
                },
                |e| verdict(e, true),
            )
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            out.unwrap_err().retry_after(),
            Some(Duration::from_secs(3600))
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_short_wait_asked_is_waited_then_the_call_succeeds() {
        let calls = AtomicUsize::new(0);
        let out = quick(5)
            .run(
                "svc",
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(Failure::RateLimited {
                            retry_after: Some(Duration::from_millis(20)),
                            message: "HTTP 429".into(),
                        })
                    } else {
                        Ok(7)
                    }
                },
                |e| verdict(e, true),
            )
            .await;
        assert_eq!(out, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn limits_hold_calls_to_the_concurrency_asked() {
        let limits = std::sync::Arc::new(Limits::new(2, None));
        let inside = std::sync::Arc::new(AtomicUsize::new(0));
        let most = std::sync::Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (limits, inside, most) = (limits.clone(), inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _p = limits.admit().await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    /// Every caller of one web service shares its rate: 18 calls from two callers at 20 a
    /// second leave at least 50 ms apart (measured where they are let through, before the
    /// network and the receiver's scheduling add their jitter).
    #[tokio::test]
    async fn limits_space_the_calls_of_every_caller_by_the_rate() {
        let limits = std::sync::Arc::new(Limits::new(4, Some((20, Duration::from_secs(1)))));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let limits = limits.clone();
            tasks.push(tokio::spawn(async move {
                let mut at = Vec::new();
                for _ in 0..9 {
                    let _p = limits.admit().await;
                    at.push(std::time::Instant::now());
                }
                at
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.extend(t.await.unwrap());
        }
        at.sort();
        let closest = at.windows(2).map(|w| w[1] - w[0]).min().unwrap();
        assert!(
            closest >= Duration::from_millis(49),
            "two calls {closest:?} apart"
        );
        assert!(at[17] - at[0] >= Duration::from_millis(17 * 49));
    }
}
