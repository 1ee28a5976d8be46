//! The Brevo contacts v3 imitation under `/v3/contacts`.

pub(crate) mod apply;
mod errors;
mod handlers;
mod import;
mod process;
pub(crate) mod store;
mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};

use super::common::lock;
use super::gate::{Vendor, gate};
use super::limits::{Admission, Policy};
use super::state::App;

pub(crate) fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/v3/contacts", post(handlers::create).get(import::list))
        .route("/v3/contacts/batch", post(handlers::batch))
        .route(
            "/v3/contacts/import",
            post(import::import).layer(DefaultBodyLimit::max(2 * import::MAX_IMPORT_BYTES)),
        )
        .route("/v3/processes/{processId}", get(import::process))
        .route(
            "/v3/contacts/{identifier}",
            get(handlers::read)
                .put(handlers::update)
                .delete(handlers::delete),
        )
        .route_layer(from_fn_with_state(app.clone(), gate::<Brevo>))
        .with_state(app)
}

/// Brevo's auth, limits and error shapes for the gate.
pub(crate) struct Brevo;

impl Vendor for Brevo {
    fn authorized(app: &App, headers: &HeaderMap) -> bool {
        let key = headers
            .get("api-key")
            .and_then(|v| v.to_str().ok())
            .map_or("", str::trim);
        match &app.opts.brevo_api_key {
            Some(expected) => key == expected,
            None => !key.is_empty(),
        }
    }

    fn unauthorized() -> Response {
        errors::unauthorized()
    }

    fn admit(app: &App, route: &str) -> Admission {
        let now = app.clock.instant();
        lock(&app.limits).admit_brevo(now, route.contains(" /v3/contacts"))
    }

    fn rate_limited(_policy: Policy) -> Response {
        errors::rate_limited()
    }

    fn failure(status: StatusCode) -> Response {
        errors::failure(status)
    }

    fn finish(_response: &mut Response) {}
}
