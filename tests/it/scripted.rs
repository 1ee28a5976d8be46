//! A scripted CRM for one-off exchanges: answers each request with the next reply
//! of a script (the last one repeats) and records what it received.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

/// One scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// How long the CRM takes to answer.
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            body: body.to_string(),
            headers: vec![],
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body: serde_json::Value,
    /// The raw body text (form-encoded token requests are not JSON).
    pub text: String,
    pub authorization: Option<String>,
    /// Requests being answered when this one arrived, itself included.
    pub in_flight: usize,
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    received: Vec<Received>,
    in_flight: usize,
}

/// The running server.
pub struct ScriptedCrm {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    /// `false` while requests are held (received, not answered).
    open: Arc<watch::Sender<bool>>,
}

impl ScriptedCrm {
    pub async fn start(script: Vec<Reply>) -> Self {
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            received: vec![],
            in_flight: 0,
        }));
        let open = Arc::new(watch::Sender::new(true));
        let (shared, gate) = (state.clone(), open.clone());
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                let mut open = gate.subscribe();
                async move {
                    let reply = receive(&state, method, uri, &headers, body);
                    let _ = open.wait_for(|open| *open).await;
                    tokio::time::sleep(reply.delay).await;
                    state.lock().unwrap().in_flight -= 1;
                    respond(reply)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base_url,
            state,
            open,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// From now on every request is received (and counted) but not
    /// answered until [`ScriptedCrm::release`]: a request held at the CRM
    /// for as long as a test needs, however slow the machine.
    pub fn hold(&self) {
        self.open.send_replace(false);
    }

    /// Answers the held requests, and every later one at once.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

/// Records a request and picks its reply.
fn receive(
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Reply {
    let mut state = state.lock().unwrap();
    state.in_flight += 1;
    let in_flight = state.in_flight;
    state.received.push(Received {
        method: method.to_string(),
        path: uri.to_string(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        text: String::from_utf8_lossy(&body).into_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        in_flight,
    });
    let reply = if state.script.len() > 1 {
        state.script.pop_front()
    } else {
        state.script.front().cloned()
    };
    reply.expect("a script with at least one reply")
}

fn respond(reply: Reply) -> Response {
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}
