//! The engine on its own OS thread, fed by a channel, so the model never
//! blocks the async runtime (TGI's router keeps its batching loop apart the
//! same way). Each request's events come back over a channel of its own;
//! when its receiver is dropped (the client went away), the request is
//! aborted and its KV freed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use weft_engine::{Engine, EngineConfig, Event, RequestId, RequestSpec, ValidationError};
use weft_model::{Model, Tokenizer};

use crate::monitor::Monitor;

/// What the HTTP side asks of the engine thread.
enum Command {
    Add {
        spec: RequestSpec,
        /// How the thread-tree page names it.
        name: String,
        events: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Result<RequestId, ValidationError>>,
    },
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Command>,
    /// The longest request (prompt + output, tokens): the model's context,
    /// or the KV cache's size when that is smaller; for `/v1/models`.
    pub max_model_len: usize,
    /// Requests added and not yet finished.
    in_flight: Arc<AtomicUsize>,
    /// Most requests in flight; more are refused (`SubmitError::Busy`).
    max_in_flight: usize,
    /// The thread-tree page's feed.
    pub monitor: Arc<Monitor>,
}

/// Why a request could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("the engine is not running")]
    EngineGone,
    #[error("the server is at its limit of {0} requests in flight; retry later")]
    Busy(usize),
}

impl EngineHandle {
    /// Starts the engine thread. The thread ends when every handle is gone.
    /// Errors: the engine cannot be built (a KV budget too small for one
    /// block).
    /// At most `max_in_flight` requests run or wait at once.
    pub fn start(
        model: Arc<Model>,
        tok: Arc<Tokenizer>,
        cfg: EngineConfig,
        max_in_flight: usize,
    ) -> Result<EngineHandle, weft_engine::EngineError> {
        Self::start_on(Compute::Native(model), tok, cfg, max_in_flight)
    }

    /// As [`EngineHandle::start`], with every thread streamed from remote
    /// servers ([`Engine::remote`]): `weft serve --backend`, a front
    /// server with weft's API, protocols, metrics and tree page over
    /// engines weft does not own. `max_context` is the served context.
    pub fn start_remote(
        pool: weft_remote::Pool,
        max_context: usize,
        tok: Arc<Tokenizer>,
        cfg: EngineConfig,
        max_in_flight: usize,
    ) -> Result<EngineHandle, weft_engine::EngineError> {
        Self::start_on(Compute::Remote(pool, max_context), tok, cfg, max_in_flight)
    }

    fn start_on(
        compute: Compute,
        tok: Arc<Tokenizer>,
        cfg: EngineConfig,
        max_in_flight: usize,
    ) -> Result<EngineHandle, weft_engine::EngineError> {
        crate::metrics::handle();
        // Build once here so a bad configuration fails at start-up, not on
        // the first request.
        let probe = compute.engine(&tok, cfg.clone())?;
        let kv_tokens = probe.kv_blocks_total() * probe.config().block_size;
        drop(probe);
        // What one request can use: the context, or less when the KV cache
        // is smaller (vLLM refuses to start then; weft says so and serves
        // shorter requests).
        let context = compute.max_context();
        let max_model_len = context.min(kv_tokens);
        if kv_tokens < context {
            tracing::warn!(
                "the KV cache holds {kv_tokens} tokens, less than the model's context of {context}: \
                 requests are limited to {kv_tokens} tokens"
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = in_flight.clone();
        let monitor = Arc::new(Monitor::default());
        let feed = monitor.clone();
        std::thread::Builder::new()
            .name("weft-engine".into())
            .spawn(move || {
                if let Ok(engine) = compute.engine(&tok, cfg) {
                    engine_loop(engine, rx, &counter, &feed);
                }
            })
            .map_err(|e| weft_engine::EngineError::Invalid(format!("engine thread: {e}")))?;
        Ok(EngineHandle {
            tx,
            max_model_len,
            in_flight,
            max_in_flight: max_in_flight.max(1),
            monitor,
        })
    }

    /// Validates `spec` and starts it; its events arrive on the returned
    /// receiver, ending with `Event::Finished`. Dropping the receiver aborts
    /// the request. `name` is how the thread-tree page shows it.
    pub async fn submit(
        &self,
        spec: RequestSpec,
        name: String,
    ) -> Result<(RequestId, mpsc::UnboundedReceiver<Event>), SubmitError> {
        // Reserve a place first; the engine thread gives it back when the
        // request ends (or is refused).
        let taken = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if taken >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Busy(self.max_in_flight));
        }
        let (events, rx) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Add {
                spec,
                name,
                events,
                reply,
            })
            .map_err(|_| {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                SubmitError::EngineGone
            })?;
        let id = answer.await.map_err(|_| SubmitError::EngineGone)??;
        Ok((id, rx))
    }
}

/// Where the engine thread's tokens come from.
enum Compute {
    Native(Arc<Model>),
    Remote(weft_remote::Pool, usize),
}

impl Compute {
    fn engine<'a>(
        &'a self,
        tok: &'a Tokenizer,
        cfg: EngineConfig,
    ) -> Result<Engine<'a>, weft_engine::EngineError> {
        match self {
            Compute::Native(model) => Engine::new(model, tok, cfg),
            Compute::Remote(pool, context) => Engine::remote(tok, cfg, pool.clone(), *context),
        }
    }

    fn max_context(&self) -> usize {
        match self {
            Compute::Native(model) => model.config.max_context,
            Compute::Remote(_, context) => *context,
        }
    }
}

fn engine_loop(
    mut engine: Engine<'_>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    in_flight: &AtomicUsize,
    monitor: &Monitor,
) {
    let mut sinks: HashMap<RequestId, mpsc::UnboundedSender<Event>> = HashMap::new();
    let mut last_token: HashMap<RequestId, std::time::Instant> = HashMap::new();
    crate::metrics::engine_gauges(&engine);
    loop {
        // Idle: wait for work. Busy: take what arrived, then step.
        if !engine.has_work() {
            match rx.blocking_recv() {
                Some(c) => accept(&mut engine, &mut sinks, c, in_flight, monitor),
                None => return,
            }
        }
        while let Ok(c) = rx.try_recv() {
            accept(&mut engine, &mut sinks, c, in_flight, monitor);
        }
        // Clients that went away while their request waited or ran.
        let gone: Vec<RequestId> = sinks
            .iter()
            .filter(|(_, s)| s.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            engine.abort(id);
            monitor.aborted(id);
            if sinks.remove(&id).is_some() {
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let events = match engine.step() {
            Ok(events) => events,
            Err(e) => {
                // An engine error (not a request's): every request in
                // flight ends; the engine itself stays up.
                tracing::error!("engine step failed: {e}");
                for (id, _) in sinks.drain() {
                    engine.abort(id);
                    monitor.aborted(id);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                continue;
            }
        };
        crate::metrics::engine_gauges(&engine);
        monitor.apply(&events);
        for event in events {
            let id = event.request();
            let finished = matches!(event, Event::Finished { .. });
            match &event {
                Event::Text {
                    thread: 0,
                    token_ids,
                    ..
                } if !token_ids.is_empty() => {
                    let now = std::time::Instant::now();
                    if let Some(t) = last_token.insert(id, now) {
                        crate::metrics::inter_token((now - t).as_secs_f64());
                    }
                }
                Event::Finished { response, .. } => {
                    last_token.remove(&id);
                    crate::metrics::finished(response);
                }
                _ => {}
            }
            if let Some(sink) = sinks.get(&id) {
                if sink.send(event).is_err() {
                    if engine.abort(id) {
                        monitor.aborted(id);
                    }
                    sinks.remove(&id);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
            }
            if finished && sinks.remove(&id).is_some() {
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

fn accept(
    engine: &mut Engine,
    sinks: &mut HashMap<RequestId, mpsc::UnboundedSender<Event>>,
    c: Command,
    in_flight: &AtomicUsize,
    monitor: &Monitor,
) {
    match c {
        Command::Add {
            spec,
            name,
            events,
            reply,
        } => {
            let protocol = match &spec.protocol {
                Some(weft_engine::ProtocolChoice::Name(n)) => Some(n.clone()),
                Some(weft_engine::ProtocolChoice::Instance(p)) => Some(p.name().to_string()),
                None => None,
            };
            accept_add(
                engine, sinks, spec, name, protocol, events, reply, in_flight, monitor,
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn accept_add(
    engine: &mut Engine,
    sinks: &mut HashMap<RequestId, mpsc::UnboundedSender<Event>>,
    spec: RequestSpec,
    name: String,
    protocol: Option<String>,
    events: mpsc::UnboundedSender<Event>,
    reply: oneshot::Sender<Result<RequestId, ValidationError>>,
    in_flight: &AtomicUsize,
    monitor: &Monitor,
) {
    match engine.add(spec) {
        Ok(id) => {
            sinks.insert(id, events);
            monitor.start(id, name, protocol.as_deref());
            if reply.send(Ok(id)).is_err() {
                engine.abort(id);
                monitor.aborted(id);
                sinks.remove(&id);
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Err(weft_engine::EngineError::Validation(v)) => {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = reply.send(Err(v));
        }
        Err(e) => {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("cannot add a request: {e}");
            drop(reply);
        }
    }
}
