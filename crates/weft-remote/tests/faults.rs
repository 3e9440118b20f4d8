//! The pool against servers started here on loopback that misbehave on
//! purpose: killed mid-stream, stalled before and after the first byte,
//! unreachable, overloaded (503), refusing the request (400), and a client
//! that goes away. Every failure must be a clear error within its timeout,
//! never a hang; a retry happens only before the first byte.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream;
use weft_remote::{CompletionRequest, Pool, PoolConfig, RemoteError, Timeouts};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Three text chunks, a usage chunk, `[DONE]`.
    Good,
    /// One chunk, then the connection is cut.
    DieMidStream,
    /// One chunk, then nothing, forever.
    StallAfterFirst,
    /// Headers, then nothing, forever.
    StallBeforeFirst,
    /// 503.
    Overloaded,
    /// 400 with an OpenAI error body.
    BadRequest,
    /// Chunks forever (one per 10 ms); records when the client leaves.
    Endless,
}

struct Server {
    url: String,
    hits: Arc<AtomicUsize>,
    client_left: Arc<AtomicBool>,
}

fn chunk(text: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"id": "c", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": null}]})
    )
}

/// Sets its flag when dropped: the server's body stream is dropped when
/// the client disconnects.
struct LeaveGuard(Arc<AtomicBool>);
impl Drop for LeaveGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn start(mode: Mode) -> Server {
    start_on(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        mode,
    )
    .await
}

async fn start_on(listener: tokio::net::TcpListener, mode: Mode) -> Server {
    let hits = Arc::new(AtomicUsize::new(0));
    let client_left = Arc::new(AtomicBool::new(false));
    let (h, left) = (hits.clone(), client_left.clone());
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async { axum::Json(serde_json::json!({"object": "list", "data": [{"id": "mock-model", "object": "model"}]})) }),
        )
        .route(
            "/v1/completions",
            post(move || {
                let (h, left) = (h.clone(), left.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    respond(mode, left).await
                }
            }),
        );
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        url,
        hits,
        client_left,
    }
}

type Item = Result<String, std::io::Error>;

async fn respond(mode: Mode, left: Arc<AtomicBool>) -> Response {
    let sse = |s: futures_util::stream::BoxStream<'static, Item>| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(s))
            .unwrap()
    };
    use futures_util::StreamExt;
    match mode {
        Mode::Good => {
            let usage = format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 5}}})
            );
            let parts: Vec<Item> = vec![
                Ok(chunk("Hello")),
                Ok(chunk(",")),
                Ok(chunk(" world")),
                Ok(usage),
                Ok("data: [DONE]\n\n".into()),
            ];
            sse(stream::iter(parts).boxed())
        }
        Mode::DieMidStream => {
            // The first chunk reaches the client, then the connection is cut.
            let cut = stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<String, _>(std::io::Error::other("killed"))
            });
            sse(stream::iter(vec![Ok(chunk("Hel"))]).chain(cut).boxed())
        }
        Mode::StallAfterFirst => sse(
            stream::iter(vec![Ok(chunk("Hel"))])
                .chain(stream::pending())
                .boxed(),
        ),
        Mode::StallBeforeFirst => sse(stream::pending().boxed()),
        Mode::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
        Mode::BadRequest => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": {"message": "max_tokens too large", "type": "invalid_request_error"}})),
        )
            .into_response(),
        Mode::Endless => {
            let guard = LeaveGuard(left);
            sse(stream::unfold(guard, |g| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((Ok(chunk("x")), g))
            })
            .boxed())
        }
    }
}

/// A URL nothing listens on.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

fn cfg() -> PoolConfig {
    PoolConfig {
        timeouts: Timeouts {
            connect: Duration::from_millis(500),
            first_byte: Duration::from_millis(400),
            idle: Duration::from_millis(300),
        },
        retries: 2,
        backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

fn req() -> CompletionRequest {
    CompletionRequest {
        model: "mock-model".into(),
        ..CompletionRequest::greedy("Say hello", 8)
    }
}

async fn drain(pool: &Pool) -> Result<(String, Option<weft_remote::Usage>, usize), RemoteError> {
    let mut s = pool.stream(&req(), None).await?;
    let (mut text, mut usage) = (String::new(), None);
    while let Some(c) = s.next().await {
        let c = c?;
        text.push_str(&c.text);
        usage = usage.or(c.usage);
    }
    Ok((text, usage, s.backend()))
}

#[tokio::test]
async fn a_good_stream_gives_text_and_usage() {
    let s = start(Mode::Good).await;
    let pool = Pool::new(std::slice::from_ref(&s.url), cfg()).unwrap();
    assert_eq!(pool.check().await.unwrap(), "mock-model");
    let (text, usage, _) = drain(&pool).await.unwrap();
    assert_eq!(text, "Hello, world");
    let u = usage.unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
        (7, 3, Some(5))
    );
}

#[tokio::test]
async fn a_backend_killed_mid_stream_is_a_clear_error_and_no_retry() {
    let s = start(Mode::DieMidStream).await;
    let pool = Pool::new(std::slice::from_ref(&s.url), cfg()).unwrap();
    let t = Instant::now();
    let mut st = pool.stream(&req(), None).await.unwrap();
    assert_eq!(st.next().await.unwrap().unwrap().text, "Hel");
    let e = st.next().await.unwrap().unwrap_err();
    assert!(matches!(e, RemoteError::Stream { .. }), "{e}");
    assert!(e.to_string().contains(&s.url), "{e}");
    assert!(st.next().await.is_none());
    assert!(t.elapsed() < Duration::from_secs(2));
    // Text was seen: the request is not retried.
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
    assert!(!pool.status()[0].healthy, "the backend is taken out");
}

#[tokio::test]
async fn a_stall_after_the_first_byte_hits_the_idle_timeout() {
    let s = start(Mode::StallAfterFirst).await;
    let pool = Pool::new(std::slice::from_ref(&s.url), cfg()).unwrap();
    let mut st = pool.stream(&req(), None).await.unwrap();
    st.next().await.unwrap().unwrap();
    let t = Instant::now();
    let e = st.next().await.unwrap().unwrap_err();
    let waited = t.elapsed();
    assert!(
        matches!(e, RemoteError::Timeout { phase: "idle", .. }),
        "{e}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_stall_before_the_first_byte_is_retried_then_fails_in_bounded_time() {
    let s = start(Mode::StallBeforeFirst).await;
    let pool = Pool::new(std::slice::from_ref(&s.url), cfg()).unwrap();
    let t = Instant::now();
    let e = pool.stream(&req(), None).await.unwrap_err();
    // One backend: the first attempt times out and takes it out; no other
    // backend may be used, so the pool says so (naming the timeout).
    assert!(
        matches!(
            e,
            RemoteError::NoBackend { .. } | RemoteError::Timeout { .. }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("first byte"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn no_backend_reachable_at_start_is_a_clear_error() {
    let a = dead_url().await;
    let b = dead_url().await;
    let pool = Pool::new(&[a.clone(), b.clone()], cfg()).unwrap();
    let t = Instant::now();
    let e = pool.check().await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RemoteError::NoBackend { .. }), "{msg}");
    assert!(
        msg.contains(&a) && msg.contains(&b) && msg.contains("cannot connect"),
        "{msg}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    let e = pool.stream(&req(), None).await.unwrap_err();
    assert!(matches!(e, RemoteError::NoBackend { .. }), "{e}");
}

#[tokio::test]
async fn with_one_of_two_backends_dead_requests_finish_on_the_other() {
    let dead = dead_url().await;
    let good = start(Mode::Good).await;
    let pool = Pool::new(&[dead.clone(), good.url.clone()], cfg()).unwrap();
    // Even when the dead one is preferred (a tree that started there).
    let mut st = pool.stream(&req(), Some(0)).await.unwrap();
    assert_eq!(st.backend(), 1);
    while let Some(c) = st.next().await {
        c.unwrap();
    }
    for _ in 0..3 {
        let (text, _, backend) = drain(&pool).await.unwrap();
        assert_eq!((text.as_str(), backend), ("Hello, world", 1));
    }
    let status = pool.status();
    assert!(!status[0].healthy && status[1].healthy, "{status:?}");
    assert!(status[0]
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("cannot connect"));
}

#[tokio::test]
async fn an_overloaded_backend_is_retried_on_another() {
    let busy = start(Mode::Overloaded).await;
    let good = start(Mode::Good).await;
    let pool = Pool::new(&[busy.url.clone(), good.url.clone()], cfg()).unwrap();
    let mut st = pool.stream(&req(), Some(0)).await.unwrap();
    assert_eq!(st.backend(), 1);
    assert_eq!(busy.hits.load(Ordering::SeqCst), 1);
    while st.next().await.is_some() {}
}

#[tokio::test]
async fn a_bad_request_is_not_retried_and_keeps_the_backend() {
    let s = start(Mode::BadRequest).await;
    let other = start(Mode::Good).await;
    let pool = Pool::new(&[s.url.clone(), other.url.clone()], cfg()).unwrap();
    let e = pool.stream(&req(), Some(0)).await.unwrap_err();
    assert!(matches!(e, RemoteError::Http { status: 400, .. }), "{e}");
    assert!(e.to_string().contains("max_tokens too large"), "{e}");
    assert_eq!(
        (
            s.hits.load(Ordering::SeqCst),
            other.hits.load(Ordering::SeqCst)
        ),
        (1, 0)
    );
    assert!(pool.status()[0].healthy);
}

#[tokio::test]
async fn dropping_a_stream_closes_the_request_on_the_server() {
    let s = start(Mode::Endless).await;
    let pool = Pool::new(std::slice::from_ref(&s.url), cfg()).unwrap();
    let mut st = pool.stream(&req(), None).await.unwrap();
    for _ in 0..3 {
        st.next().await.unwrap().unwrap();
    }
    assert!(!s.client_left.load(Ordering::SeqCst));
    drop(st);
    let t = Instant::now();
    while !s.client_left.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the server never saw the client leave"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.status()[0].in_flight, 0);
}

#[tokio::test]
async fn concurrency_per_backend_is_limited() {
    let s = start(Mode::Endless).await;
    let pool = Pool::new(
        std::slice::from_ref(&s.url),
        PoolConfig {
            max_concurrency: 1,
            ..cfg()
        },
    )
    .unwrap();
    let first = pool.stream(&req(), None).await.unwrap();
    let second = tokio::time::timeout(Duration::from_millis(300), pool.stream(&req(), None)).await;
    assert!(second.is_err(), "a second request ran past the limit of 1");
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(2), pool.stream(&req(), None)).await;
    assert!(matches!(second, Ok(Ok(_))));
}

#[tokio::test]
async fn new_requests_go_to_the_least_loaded_backend_and_trees_stay_put() {
    let a = start(Mode::Endless).await;
    let b = start(Mode::Endless).await;
    let pool = Pool::new(&[a.url.clone(), b.url.clone()], cfg()).unwrap();
    let s1 = pool.stream(&req(), None).await.unwrap();
    let s2 = pool.stream(&req(), None).await.unwrap();
    assert_ne!(
        s1.backend(),
        s2.backend(),
        "the second request went to the loaded backend"
    );
    // A thread of s1's tree goes where s1 runs, however loaded.
    let s3 = pool.stream(&req(), Some(s1.backend())).await.unwrap();
    let s4 = pool.stream(&req(), Some(s1.backend())).await.unwrap();
    assert_eq!((s3.backend(), s4.backend()), (s1.backend(), s1.backend()));
    let in_flight: Vec<u64> = pool.status().iter().map(|s| s.in_flight).collect();
    assert_eq!(in_flight.iter().sum::<u64>(), 4);
}

#[tokio::test]
async fn a_backend_taken_out_is_probed_again_after_its_back_off() {
    let url = dead_url().await;
    let pool = Pool::new(
        std::slice::from_ref(&url),
        PoolConfig {
            probe_after: Duration::from_millis(300),
            ..cfg()
        },
    )
    .unwrap();
    assert!(pool.check().await.is_err());
    // The server comes up on that address.
    let listener = tokio::net::TcpListener::bind(url.trim_start_matches("http://"))
        .await
        .unwrap();
    let s = start_on(listener, Mode::Good).await;
    // Within the back-off the backend is not tried.
    let e = pool.stream(&req(), None).await.unwrap_err();
    assert!(matches!(e, RemoteError::NoBackend { .. }), "{e}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (text, _, _) = drain(&pool).await.unwrap();
    assert_eq!(text, "Hello, world");
    assert!(pool.status()[0].healthy);
}

/// A server that wants another API key: a configuration error at start,
/// named as such, and no outage (the backend is not taken out).
#[tokio::test]
async fn a_refused_api_key_is_said_at_start_and_is_no_outage() {
    let app = Router::new().route(
        "/v1/models",
        get(|| async {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": {"message": "Invalid API key", "type": "authentication_error"}})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let pool = Pool::new(std::slice::from_ref(&url), cfg()).unwrap();
    let e = pool.check().await.unwrap_err();
    assert!(
        matches!(e, RemoteError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("--backend-api-key"), "{e}");
    assert!(!e.is_backend_fault());
    assert!(pool.status()[0].healthy, "taken out for a wrong key");
}
