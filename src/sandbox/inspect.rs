//! Inspection endpoints under `/_sandbox`: no auth, no limits, no stats.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::state::App;

pub(crate) fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/_sandbox/hubspot/contacts", get(hubspot_contacts))
        .route("/_sandbox/brevo/contacts", get(brevo_contacts))
        .route("/_sandbox/stats", get(stats))
        .route("/_sandbox/reset", post(reset))
        .route("/_sandbox/clock/advance", post(advance))
        .with_state(app)
}

async fn hubspot_contacts(State(app): State<Arc<App>>) -> Json<Vec<Value>> {
    Json(app.hubspot_contacts())
}

async fn brevo_contacts(State(app): State<Arc<App>>) -> Json<Vec<Value>> {
    Json(app.brevo_contacts())
}

async fn stats(State(app): State<Arc<App>>) -> Json<Value> {
    Json(app.stats_json())
}

async fn reset(State(app): State<Arc<App>>) -> StatusCode {
    app.reset();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Advance {
    ms: u64,
}

async fn advance(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<Advance>(&body) {
        Ok(Advance { ms }) => {
            app.clock.advance(Duration::from_millis(ms));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => {
            let body = json!({"message": format!("expected {{\"ms\": N}}: {err}")});
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
    }
}
