//! The feed of the live thread-tree page (`GET /`, fed by `GET /weft/tree`).
//!
//! The engine thread reports every request's tree events here after each
//! step ([`Monitor::apply`]). The monitor keeps, per running and recently
//! finished request, the log of its tree events (consecutive text deltas of
//! one thread coalesced), and broadcasts each new event to the pages that
//! are connected. A page that connects gets a snapshot of those logs first,
//! taken under the same lock as its subscription, so it misses nothing and
//! sees nothing twice; it then replays snapshot and live events with one
//! piece of code.
//!
//! Event JSON (`type` first; every event names its `request`, the OpenAI
//! id with the choice index, e.g. `chatcmpl-…-3/0`):
//! - `request` `{protocol}`: a request started;
//! - `start` `{thread, parent, depth, label}`, `delta` `{thread, text}`,
//!   `fork` `{thread, children}`, `join` `{thread, children, reused_tokens,
//!   appended}`, `done` `{thread, generated_tokens}`: its tree;
//! - `finished` `{reason, stats}`: it ended (`stats` as the trace JSON's).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::broadcast;
use weft_engine::{Event, RequestId};

/// Finished requests the page still shows.
pub const RECENT: usize = 32;
/// Text kept per thread in a log; the rest is cut (the live feed is not).
pub const MAX_THREAD_TEXT: usize = 32 * 1024;
/// Events buffered per connected page before it must resynchronise.
const CHANNEL: usize = 4096;

/// The tree events of running and recent requests, and their live feed.
pub struct Monitor {
    state: Mutex<State>,
    tx: broadcast::Sender<String>,
}

#[derive(Default)]
struct State {
    running: HashMap<RequestId, Log>,
    /// Finished requests, oldest first.
    recent: VecDeque<Log>,
}

struct Log {
    name: String,
    events: Vec<Value>,
    /// Text kept per thread (bytes), to cap the log.
    kept: HashMap<usize, usize>,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            state: Mutex::new(State::default()),
            tx: broadcast::channel(CHANNEL).0,
        }
    }
}

impl Monitor {
    /// A request started: `name` is how the page shows it.
    pub fn start(&self, id: RequestId, name: String, protocol: Option<&str>) {
        let event = json!({"type": "request", "request": name, "protocol": protocol});
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        self.send(&event);
        st.running.insert(
            id,
            Log {
                name,
                events: vec![event],
                kept: HashMap::new(),
            },
        );
    }

    /// The events of one engine step.
    pub fn apply(&self, events: &[Event]) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        for e in events {
            let id = e.request();
            let Some(log) = st.running.get_mut(&id) else {
                continue;
            };
            let Some(mut v) = tree_json(e) else {
                continue;
            };
            v["request"] = json!(log.name);
            self.send(&v);
            log.push(v);
            if matches!(e, Event::Finished { .. }) {
                if let Some(log) = st.running.remove(&id) {
                    st.retire(log);
                }
            }
        }
    }

    /// A request left without a `Finished` event (its client went away).
    pub fn aborted(&self, id: RequestId) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some(mut log) = st.running.remove(&id) {
            let v = json!({"type": "finished", "request": log.name, "reason": "abort",
                           "stats": Value::Null});
            self.send(&v);
            log.push(v);
            st.retire(log);
        }
    }

    /// A snapshot (`{"type": "snapshot", "requests": [{request, events}]}`,
    /// finished requests first, then running ones by age) and the live
    /// feed from that moment on.
    pub fn subscribe(&self) -> (String, broadcast::Receiver<String>) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let mut running: Vec<&Log> = st.running.values().collect();
        running.sort_by_key(|l| l.name.clone());
        let requests: Vec<Value> = st
            .recent
            .iter()
            .chain(running)
            .map(|l| json!({"request": l.name, "events": l.events}))
            .collect();
        (
            json!({"type": "snapshot", "requests": requests}).to_string(),
            rx,
        )
    }

    fn send(&self, v: &Value) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(v.to_string());
        }
    }
}

impl State {
    fn retire(&mut self, log: Log) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(log);
    }
}

impl Log {
    /// Appends `v`, joining a text delta to the one before it when both
    /// belong to one thread, and cutting each thread's text at
    /// [`MAX_THREAD_TEXT`].
    fn push(&mut self, mut v: Value) {
        if v["type"] != "delta" {
            self.events.push(v);
            return;
        }
        let thread = v["thread"].as_u64().unwrap_or(0) as usize;
        let kept = self.kept.entry(thread).or_default();
        let Some(text) = v["text"].as_str() else {
            return;
        };
        let room = MAX_THREAD_TEXT.saturating_sub(*kept);
        if room == 0 {
            return;
        }
        let mut cut = text.len().min(room);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let text = text[..cut].to_string();
        *kept += text.len();
        if let Some(last) = self.events.last_mut() {
            if last["type"] == "delta" && last["thread"] == v["thread"] {
                let joined = format!("{}{text}", last["text"].as_str().unwrap_or(""));
                last["text"] = json!(joined);
                return;
            }
        }
        v["text"] = json!(text);
        self.events.push(v);
    }
}

/// An engine event as tree-event JSON (without the request's name); `None`
/// for events the tree does not show (empty text).
pub fn tree_json(e: &Event) -> Option<Value> {
    Some(match e {
        Event::ThreadStarted {
            thread,
            parent,
            depth,
            label,
            ..
        } => json!({"type": "start", "thread": thread, "parent": parent, "depth": depth,
                    "label": label}),
        Event::Text { thread, text, .. } if !text.is_empty() => {
            json!({"type": "delta", "thread": thread, "text": text})
        }
        Event::Forked {
            thread, children, ..
        } => json!({"type": "fork", "thread": thread, "children": children}),
        Event::Joined {
            thread,
            children,
            reused_tokens,
            appended,
            ..
        } => json!({"type": "join", "thread": thread, "children": children,
                    "reused_tokens": reused_tokens, "appended": appended}),
        Event::ThreadFinished {
            thread,
            generated_tokens,
            ..
        } => json!({"type": "done", "thread": thread, "generated_tokens": generated_tokens}),
        Event::Note { thread, text, .. } => {
            json!({"type": "note", "thread": thread, "text": text})
        }
        Event::Finished {
            reason, response, ..
        } => json!({"type": "finished", "reason": reason.as_str(), "stats": response.stats}),
        Event::Text { .. } | Event::Prompt { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(request: RequestId, thread: usize, text: &str) -> Event {
        Event::Text {
            request,
            thread,
            depth: 0,
            text: text.into(),
            token_ids: vec![1],
            logprobs: None,
        }
    }

    #[test]
    fn snapshot_coalesces_deltas_and_the_feed_continues_after_it() {
        let m = Monitor::default();
        let id = RequestId(7);
        m.start(id, "cmpl-1/0".into(), Some("threadweaver"));
        m.apply(&[text(id, 0, "Hel"), text(id, 0, "lo"), text(id, 1, "x")]);
        let (snap, mut rx) = m.subscribe();
        let snap: Value = serde_json::from_str(&snap).unwrap();
        let events = &snap["requests"][0]["events"];
        assert_eq!(events[0]["type"], "request");
        assert_eq!(events[1]["text"], "Hello");
        assert_eq!(events[2]["text"], "x");
        assert_eq!(events.as_array().unwrap().len(), 3);
        m.apply(&[text(id, 0, "!")]);
        let live: Value = serde_json::from_str(&rx.try_recv().unwrap()).unwrap();
        assert_eq!(live["text"], "!");
        assert_eq!(live["request"], "cmpl-1/0");
        assert!(
            rx.try_recv().is_err(),
            "nothing before the snapshot is sent again"
        );
    }

    #[test]
    fn aborted_and_finished_requests_move_to_recent_and_recent_is_bounded() {
        let m = Monitor::default();
        for i in 0..(RECENT as u64 + 5) {
            m.start(RequestId(i), format!("r{i}"), None);
            m.aborted(RequestId(i));
        }
        let (snap, _) = m.subscribe();
        let snap: Value = serde_json::from_str(&snap).unwrap();
        let requests = snap["requests"].as_array().unwrap();
        assert_eq!(requests.len(), RECENT);
        assert_eq!(requests[0]["request"], "r5");
        let last = requests[RECENT - 1]["events"].as_array().unwrap();
        assert_eq!(last.last().unwrap()["reason"], "abort");
    }

    #[test]
    fn a_thread_text_is_cut_at_a_char_boundary() {
        let m = Monitor::default();
        let id = RequestId(1);
        m.start(id, "r".into(), None);
        let chunk = "é".repeat(1000); // 2000 bytes
        let events: Vec<Event> = (0..40).map(|_| text(id, 0, &chunk)).collect();
        m.apply(&events);
        let (snap, _) = m.subscribe();
        let snap: Value = serde_json::from_str(&snap).unwrap();
        let kept = snap["requests"][0]["events"][1]["text"].as_str().unwrap();
        assert!(kept.len() <= MAX_THREAD_TEXT && kept.len() > MAX_THREAD_TEXT - 4);
        assert!(kept.chars().all(|c| c == 'é'));
    }
}
