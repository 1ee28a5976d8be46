//! The middleware in front of every CRM route: stats, auth, rate limits,
//! latency and injected failures, in that order.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::common::lock;
use super::limits::{Admission, Policy};
use super::state::App;

/// What differs between the two imitated vendors.
pub(crate) trait Vendor: Send + Sync + 'static {
    fn authorized(app: &App, headers: &HeaderMap) -> bool;
    fn unauthorized() -> Response;
    fn admit(app: &App, route: &str) -> Admission;
    fn rate_limited(policy: Policy) -> Response;
    /// A 502 or 503 in the vendor's body shape.
    fn failure(status: StatusCode) -> Response;
    /// Last touches to every response (e.g. a correlation-id header).
    fn finish(response: &mut Response);
}

/// Keeps `in_flight` right even when a client abandons its request.
struct InFlight(Arc<App>);

impl InFlight {
    fn enter(app: &Arc<App>, route: &str) -> Self {
        lock(&app.stats).enter(route);
        InFlight(app.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0.stats).leave();
    }
}

pub(crate) async fn gate<V: Vendor>(
    State(app): State<Arc<App>>,
    path: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let route = format!("{} {}", request.method(), path.as_str());
    let _in_flight = InFlight::enter(&app, &route);
    let verdict = if V::authorized(&app, request.headers()) {
        Ok(V::admit(&app, &route))
    } else {
        Err(V::unauthorized())
    };
    if app.opts.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(app.opts.latency_ms)).await;
    }
    let mut response = match verdict {
        Err(response) => response,
        Ok(admission) => admitted::<V>(&app, admission, request, next).await,
    };
    V::finish(&mut response);
    lock(&app.stats).answered(response.status().as_u16());
    response
}

async fn admitted<V: Vendor>(
    app: &App,
    admission: Admission,
    request: Request,
    next: Next,
) -> Response {
    let mut response = if let Some(policy) = admission.denied {
        V::rate_limited(policy)
    } else if let Some(status) = injected_failure(app.opts.fail_rate) {
        V::failure(status)
    } else {
        next.run(request).await
    };
    response.headers_mut().extend(admission.headers);
    response
}

/// With probability `fail_rate`, a 502 or a 503 (evenly).
fn injected_failure(fail_rate: f64) -> Option<StatusCode> {
    if fail_rate <= 0.0 || !rand::random_bool(fail_rate.min(1.0)) {
        return None;
    }
    Some(if rand::random_bool(0.5) {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    })
}
