//! Backends and the choice among them: every thread of one request stays on
//! one backend (its prefix cache holds the shared text), new requests go to
//! the backend with the least outstanding work, a failing backend is taken
//! out and tried again after a back-off, and each backend runs at most
//! `max_concurrency` requests at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::completion::{clip, CompletionRequest};
use crate::stream::{CompletionStream, Opened};
use crate::RemoteError;

/// Index of a backend in the pool (the order of the URLs given).
pub type BackendId = usize;

/// Time limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connection set-up.
    pub connect: Duration,
    /// From sending the request to its first stream event: the server's
    /// queueing and prefill.
    pub first_byte: Duration,
    /// Between two reads of the stream once it has started.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(60),
        }
    }
}

/// How the pool talks to its backends.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub timeouts: Timeouts,
    /// Further attempts of a request that failed before its first byte
    /// (connection refused or reset, 5xx, 429, first-byte timeout), each on
    /// another backend where there is one. A request never retries after
    /// its first byte: its text has been seen.
    pub retries: u32,
    /// Wait before the first retry; doubles with each one.
    pub backoff: Duration,
    /// Requests one backend runs at once; more wait for a slot.
    pub max_concurrency: usize,
    /// A backend that failed is not chosen again for this long (doubling
    /// with consecutive failures, at most 30 s); after it, the next request
    /// that needs it probes it.
    pub probe_after: Duration,
    /// Sent as `Authorization: Bearer KEY` (`--api-key` of vLLM, SGLang,
    /// llama-server and `weft serve`).
    pub api_key: Option<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            timeouts: Timeouts::default(),
            retries: 2,
            backoff: Duration::from_millis(200),
            max_concurrency: 64,
            probe_after: Duration::from_secs(2),
            api_key: None,
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    /// Not chosen before this instant (None: healthy).
    retry_at: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Backend {
    /// Base URL without a trailing `/` or `/v1`.
    pub(crate) url: String,
    slots: Arc<Semaphore>,
    health: Mutex<Health>,
    /// Outstanding work: the sum of in-flight requests' `max_tokens` plus a
    /// quarter of their prompt bytes (a token-count estimate).
    work: AtomicU64,
    requests: AtomicU64,
    /// The id `GET /v1/models` lists first (what a request with no model
    /// name is sent as).
    model: Mutex<Option<String>>,
}

/// One backend as the pool sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    pub url: String,
    pub healthy: bool,
    pub in_flight: u64,
    pub last_error: Option<String>,
}

/// A set of OpenAI-compatible servers. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: reqwest::Client,
    pub(crate) backends: Vec<Backend>,
    pub(crate) cfg: PoolConfig,
}

/// Holds a backend's concurrency slot and its share of outstanding work
/// until dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    pool: Pool,
    id: BackendId,
    work: u64,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let b = &self.pool.inner.backends[self.id];
        b.work.fetch_sub(self.work, Ordering::Relaxed);
        b.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `http://host:port`, `http://host:port/` and `http://host:port/v1` all
/// name the same server.
fn base_url(url: &str) -> Result<String, RemoteError> {
    let u = url.trim();
    let bad = |message: &str| RemoteError::BadUrl {
        url: u.to_string(),
        message: message.to_string(),
    };
    if u.is_empty() {
        return Err(bad("an empty URL (a stray comma in the list?)"));
    }
    if !u.contains("://") {
        return Err(bad(
            "no scheme: expected http://HOST:PORT (e.g. http://127.0.0.1:8000)",
        ));
    }
    let parsed = reqwest::Url::parse(u).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() == "https" {
        // reqwest is built without TLS here (no OpenSSL or rustls in the
        // build): say so now rather than fail every request.
        return Err(bad(
            "https is not supported by this build of weft (no TLS): reach the server over \
             http, e.g. through an SSH tunnel or a local TLS-terminating proxy",
        ));
    }
    if parsed.scheme() != "http" || parsed.host_str().is_none() {
        return Err(bad("expected http://HOST:PORT"));
    }
    let mut s = u.trim_end_matches('/').to_string();
    if let Some(stripped) = s.strip_suffix("/v1") {
        s = stripped.to_string();
    }
    Ok(s)
}

impl Pool {
    /// A pool over `urls` (at least one; duplicates refused). Nothing is
    /// contacted yet: [`Pool::check`] does that.
    pub fn new(urls: &[String], cfg: PoolConfig) -> Result<Pool, RemoteError> {
        if urls.is_empty() {
            return Err(RemoteError::BadUrl {
                url: String::new(),
                message: "no backend URL given".into(),
            });
        }
        let mut backends: Vec<Backend> = Vec::new();
        for u in urls {
            let url = base_url(u)?;
            if backends.iter().any(|b| b.url == url) {
                return Err(RemoteError::BadUrl {
                    url,
                    message: "given twice".into(),
                });
            }
            backends.push(Backend {
                url,
                slots: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))),
                health: Mutex::new(Health::default()),
                work: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                model: Mutex::new(None),
            });
        }
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeouts.connect)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RemoteError::BadUrl {
                url: String::new(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Pool {
            inner: Arc::new(Inner {
                client,
                backends,
                cfg,
            }),
        })
    }

    /// The backends' base URLs, in order.
    pub fn urls(&self) -> Vec<String> {
        self.inner.backends.iter().map(|b| b.url.clone()).collect()
    }

    /// Every backend's state now.
    pub fn status(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        self.inner
            .backends
            .iter()
            .map(|b| {
                let h = b.health.lock().unwrap_or_else(|e| e.into_inner());
                BackendStatus {
                    url: b.url.clone(),
                    healthy: !matches!(h.retry_at, Some(t) if t > now),
                    in_flight: b.requests.load(Ordering::Relaxed),
                    last_error: h.last_error.clone(),
                }
            })
            .collect()
    }

    /// Asks every backend for `GET /v1/models` (within the connect and
    /// first-byte timeouts) and returns the first answering backend's
    /// model id. Each backend's id is kept: a request with an empty `model`
    /// is sent to each backend as the model it serves (vLLM and `weft
    /// serve` refuse other names, and replicas may name one model
    /// differently). Backends that do not answer are marked down.
    ///
    /// Errors: [`RemoteError::Unauthorized`] when a backend refuses the API
    /// key (or wants one); [`RemoteError::NoBackend`] when none answers,
    /// naming each URL and why.
    pub async fn check(&self) -> Result<String, RemoteError> {
        let futs = (0..self.inner.backends.len()).map(|id| async move {
            let r = self.models(id).await;
            match &r {
                // A wrong or missing key is no outage: said at once.
                Err(RemoteError::Unauthorized { .. }) => {}
                Err(e) => self.mark_down(id, e),
                Ok(_) => self.mark_up(id),
            }
            r
        });
        let results = futures_util::future::join_all(futs).await;
        if let Some(Err(e)) = results
            .iter()
            .find(|r| matches!(r, Err(RemoteError::Unauthorized { .. })))
        {
            return Err(e.clone());
        }
        let mut errors = Vec::new();
        let mut model = None;
        for r in results {
            match r {
                Ok(m) => {
                    model.get_or_insert(m);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        model.ok_or(RemoteError::NoBackend { errors })
    }

    async fn models(&self, id: BackendId) -> Result<String, RemoteError> {
        let b = &self.inner.backends[id];
        let url = format!("{}/v1/models", b.url);
        let mut rq = self.inner.client.get(&url);
        if let Some(k) = &self.inner.cfg.api_key {
            rq = rq.bearer_auth(k);
        }
        let limit = self.inner.cfg.timeouts.first_byte;
        let resp = tokio::time::timeout(limit, rq.send())
            .await
            .map_err(|_| RemoteError::Timeout {
                url: url.clone(),
                phase: "first byte",
                after: limit,
            })?
            .map_err(|e| RemoteError::connect(&url, e))?;
        let status = resp.status();
        let text = tokio::time::timeout(limit, resp.text())
            .await
            .map_err(|_| RemoteError::Timeout {
                url: url.clone(),
                phase: "first byte",
                after: limit,
            })?
            .map_err(|e| RemoteError::connect(&url, e))?;
        if !status.is_success() {
            return Err(RemoteError::http(&url, status.as_u16(), clip(&text)));
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| RemoteError::Protocol {
                url: url.clone(),
                message: format!("`/v1/models` is not JSON ({e})"),
            })?;
        let id = v
            .pointer("/data/0/id")
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| RemoteError::Protocol {
                url,
                message: format!("`/v1/models` lists no model: {}", clip(&text)),
            })?;
        *b.model.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.clone());
        Ok(id)
    }

    /// The model id backend `id` serves (asked once, then kept).
    async fn backend_model(&self, id: BackendId) -> Result<String, RemoteError> {
        let known = self.inner.backends[id]
            .model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match known {
            Some(m) => Ok(m),
            None => self.models(id).await,
        }
    }

    pub(crate) fn mark_down(&self, id: BackendId, e: &RemoteError) {
        let cfg = &self.inner.cfg;
        let mut h = self.inner.backends[id]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.failures = h.failures.saturating_add(1);
        let wait = cfg
            .probe_after
            .saturating_mul(1 << h.failures.saturating_sub(1).min(8))
            .min(Duration::from_secs(30));
        h.retry_at = Some(Instant::now() + wait);
        h.last_error = Some(e.to_string());
        tracing::warn!(backend = %self.inner.backends[id].url, error = %e, retry_in_ms = wait.as_millis() as u64, "backend taken out");
    }

    pub(crate) fn mark_up(&self, id: BackendId) {
        let mut h = self.inner.backends[id]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.retry_at = None;
        h.failures = 0;
    }

    /// The backend for a new request: `prefer` when it may be used, else
    /// the usable one with the least outstanding work (ties: the first).
    /// Backends in `avoid` are skipped while another is usable.
    fn pick(
        &self,
        prefer: Option<BackendId>,
        avoid: &[BackendId],
    ) -> Result<BackendId, RemoteError> {
        let now = Instant::now();
        let usable = |id: BackendId| {
            let h = self.inner.backends[id]
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            !matches!(h.retry_at, Some(t) if t > now)
        };
        if let Some(p) = prefer.filter(|&p| p < self.inner.backends.len()) {
            if usable(p) && !avoid.contains(&p) {
                return Ok(p);
            }
        }
        let best = |skip: &[BackendId]| {
            (0..self.inner.backends.len())
                .filter(|&i| usable(i) && !skip.contains(&i))
                .min_by_key(|&i| self.inner.backends[i].work.load(Ordering::Relaxed))
        };
        best(avoid)
            .or_else(|| best(&[]))
            .ok_or_else(|| RemoteError::NoBackend {
                errors: self
                    .status()
                    .into_iter()
                    .map(|s| s.last_error.unwrap_or_else(|| format!("{}: down", s.url)))
                    .collect(),
            })
    }

    async fn lease(&self, id: BackendId, req: &CompletionRequest) -> Result<Lease, RemoteError> {
        let b = &self.inner.backends[id];
        let slot = b
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RemoteError::NoBackend { errors: vec![] })?;
        let work = u64::from(req.max_tokens) + req.prompt.len() as u64 / 4;
        b.work.fetch_add(work, Ordering::Relaxed);
        b.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            pool: self.clone(),
            id,
            work,
            _slot: slot,
        })
    }

    /// Starts one streamed completion: on `prefer` when usable (the backend
    /// the request's other threads ran on), else on the least loaded
    /// backend. Returns once the first stream event has arrived. Failures
    /// before that are retried on other backends (`retries`, with back-off),
    /// and take the failing backend out.
    ///
    /// Errors: the last attempt's error; [`RemoteError::NoBackend`] when no
    /// backend may be used; an HTTP 4xx answer at once (the request itself
    /// is wrong, no retry).
    pub async fn stream(
        &self,
        req: &CompletionRequest,
        prefer: Option<BackendId>,
    ) -> Result<CompletionStream, RemoteError> {
        let cfg = &self.inner.cfg;
        let mut tried = Vec::new();
        let mut attempt = 0u32;
        loop {
            let id = self.pick(prefer, &tried)?;
            let lease = self.lease(id, req).await?;
            match self.open(id, req).await {
                Ok(opened) => {
                    self.mark_up(id);
                    return Ok(CompletionStream::new(self.clone(), id, lease, opened));
                }
                Err(e) => {
                    drop(lease);
                    if !e.is_backend_fault() {
                        return Err(e);
                    }
                    self.mark_down(id, &e);
                    if attempt >= cfg.retries {
                        return Err(e);
                    }
                    tracing::info!(backend = %self.inner.backends[id].url, error = %e, attempt, "retrying before the first byte");
                    tokio::time::sleep(cfg.backoff.saturating_mul(1 << attempt.min(10))).await;
                    attempt += 1;
                    tried.push(id);
                }
            }
        }
    }

    /// Sends the request and waits for its first stream event, all within
    /// the first-byte timeout.
    async fn open(&self, id: BackendId, req: &CompletionRequest) -> Result<Opened, RemoteError> {
        let url = format!("{}/v1/completions", self.inner.backends[id].url);
        let limit = self.inner.cfg.timeouts.first_byte;
        let fut = async {
            let body = if req.model.is_empty() {
                let model = self.backend_model(id).await?;
                CompletionRequest {
                    model,
                    ..req.clone()
                }
                .body()
            } else {
                req.body()
            };
            let mut rq = self.inner.client.post(&url).json(&body);
            if let Some(k) = &self.inner.cfg.api_key {
                rq = rq.bearer_auth(k);
            }
            let resp = rq.send().await.map_err(|e| RemoteError::connect(&url, e))?;
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                return Err(RemoteError::http(&url, status.as_u16(), clip(&body)));
            }
            let mut body = Box::pin(resp.bytes_stream());
            let mut parser = crate::sse::SseParser::default();
            loop {
                match body.next().await {
                    Some(Ok(bytes)) => {
                        let events = parser.feed(&bytes);
                        if !events.is_empty() {
                            return Ok(Opened {
                                url: url.clone(),
                                body,
                                parser,
                                first: events,
                            });
                        }
                    }
                    Some(Err(e)) => return Err(RemoteError::stream(&url, e)),
                    None => {
                        return Err(RemoteError::Stream {
                            url: url.clone(),
                            message: "the server closed the stream before its first event".into(),
                        })
                    }
                }
            }
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| RemoteError::Timeout {
                url: url.clone(),
                phase: "first byte",
                after: limit,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_and_checked() {
        assert_eq!(
            base_url("http://127.0.0.1:8000/v1/").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(base_url(" http://h:1/ ").unwrap(), "http://h:1");
        for bad in ["127.0.0.1:8000", "ftp://h/", "http://", ""] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
        // Each says what is wrong, in words.
        let says = |u: &str| base_url(u).unwrap_err().to_string();
        assert!(
            says("127.0.0.1:8000").contains("no scheme"),
            "{}",
            says("127.0.0.1:8000")
        );
        assert!(says("").contains("empty"), "{}", says(""));
        assert!(
            says("https://h:1").contains("https is not supported"),
            "{}",
            says("https://h:1")
        );
        let e = Pool::new(
            &["http://a:1".into(), "http://a:1/v1".into()],
            PoolConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }
}
