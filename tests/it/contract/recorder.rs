//! A recording proxy: an axum server on 127.0.0.1:0 that keeps every request
//! it receives (method, raw path, raw query, headers, body), forwards it to the
//! real server with reqwest and relays the answer unchanged. The sandbox counts
//! requests but keeps no bodies, so the contract tests put this in front of it.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Headers that belong to one hop, never forwarded either way.
const HOP_BY_HOP: [&str; 5] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
];

/// One request as the engine sent it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path as it was on the wire, percent-encoding included.
    pub path: String,
    /// The raw query string, without `?`; `None` when there was none.
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body bytes; empty when there was none.
    pub body: Bytes,
    /// The status the upstream server answered.
    pub status: u16,
}

impl Recorded {
    /// A request built by hand, for the negative controls.
    pub fn new(
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (path_and_query.to_owned(), None),
        };
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        Recorded {
            method: method.to_owned(),
            path,
            query,
            headers: map,
            body,
            status: 0,
        }
    }

    /// `METHOD /path?query`, for messages.
    pub fn line(&self) -> String {
        match &self.query {
            Some(q) => format!("{} {}?{q}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

/// The running proxy.
pub struct Recorder {
    pub base_url: String,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    /// Listens on a free port and forwards everything to `upstream` (scheme, host, port).
    pub async fn start(upstream: &str) -> Recorder {
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let state = (
            log.clone(),
            Arc::new(upstream.trim_end_matches('/').to_owned()),
            reqwest::Client::new(),
        );
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (log, upstream, http) = state.clone();
                async move { forward(&log, &upstream, &http, method, uri, headers, body).await }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the recorder");
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the recorder serves");
        });
        Recorder { base_url, log }
    }

    /// Everything received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
}

async fn forward(
    log: &Mutex<Vec<Recorded>>,
    upstream: &str,
    http: &reqwest::Client,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = format!(
        "{upstream}{}",
        uri.path_and_query().map_or("/", |pq| pq.as_str())
    );
    let mut request = http.request(method.clone(), target).body(body.clone());
    for (name, value) in &headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            request = request.header(name, value);
        }
    }
    let (status, answer_headers, answer_body) = match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let answer_headers = answer.headers().clone();
            let bytes = answer.bytes().await.unwrap_or_default();
            (status, answer_headers, bytes)
        }
        Err(err) => (
            StatusCode::BAD_GATEWAY,
            HeaderMap::new(),
            Bytes::from(format!("recorder: upstream failed: {err}")),
        ),
    };
    log.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body,
        status: status.as_u16(),
    });
    let mut response = (status, answer_body).into_response();
    for (name, value) in &answer_headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}
