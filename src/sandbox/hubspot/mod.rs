//! The HubSpot CRM contacts v3 imitation under `/crm/v3/objects/contacts`.

mod batch;
mod errors;
mod search;
mod single;
pub(crate) mod store;
mod upsert;
pub(crate) mod validate;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};

use super::common::lock;
use super::gate::{Vendor, gate};
use super::limits::{Admission, Policy};
use super::state::App;

const BASE: &str = "/crm/v3/objects/contacts";
const SEARCH: &str = "/crm/v3/objects/contacts/search";

pub(crate) fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route(BASE, post(single::create).get(single::list))
        .route(SEARCH, post(search::search))
        .route(&format!("{BASE}/batch/create"), post(batch::create))
        .route(&format!("{BASE}/batch/update"), post(batch::update))
        .route(&format!("{BASE}/batch/upsert"), post(upsert::upsert))
        .route(&format!("{BASE}/batch/read"), post(batch::read))
        .route(&format!("{BASE}/batch/archive"), post(batch::archive))
        .route(
            &format!("{BASE}/{{id}}"),
            get(single::read)
                .patch(single::update)
                .delete(single::archive),
        )
        .route_layer(from_fn_with_state(app.clone(), gate::<HubSpot>))
        .with_state(app)
}

/// HubSpot's auth, limits and error shapes for the gate.
pub(crate) struct HubSpot;

impl Vendor for HubSpot {
    fn authorized(app: &App, headers: &HeaderMap) -> bool {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        match &app.opts.hubspot_token {
            Some(expected) => token == expected,
            None => !token.is_empty(),
        }
    }

    fn unauthorized() -> Response {
        errors::unauthorized()
    }

    fn admit(app: &App, route: &str) -> Admission {
        let (now, today) = (app.clock.instant(), app.clock.wall().date_naive());
        let mut limits = lock(&app.limits);
        if route.ends_with(SEARCH) {
            limits.admit_search(now, today)
        } else {
            limits.admit_hubspot(now, today)
        }
    }

    fn rate_limited(policy: Policy) -> Response {
        errors::rate_limited(policy)
    }

    fn failure(status: StatusCode) -> Response {
        errors::failure(status)
    }

    fn finish(response: &mut Response) {
        let headers = response.headers_mut();
        if !headers.contains_key(errors::CORRELATION_HEADER) {
            let id = uuid::Uuid::new_v4().to_string();
            if let Ok(value) = HeaderValue::from_str(&id) {
                headers.insert(errors::CORRELATION_HEADER, value);
            }
        }
    }
}
