//! Prometheus metrics and the health endpoints of `engine run --listen ADDR`.
//!
//! The metrics live in one process-wide registry: the engine's parts report to
//! it as they work (rows, requests, waits, cycles), and the queue depth is
//! counted from the database when Prometheus scrapes. Nothing is exported
//! unless `--listen` is given.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use tokio::sync::watch;

use crate::history::Counts;
use crate::plan::Plan;
use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MappingOutcome {
    mapping: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorStatus {
    connector: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabel {
    connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MappingLabel {
    mapping: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MappingStatus {
    mapping: String,
    status: String,
}

type Seconds = Counter<f64, AtomicU64>;
type Timestamp = Gauge<f64, AtomicU64>;
type Histograms = Family<MappingLabel, Histogram, fn() -> Histogram>;

/// Every metric the engine exports.
pub struct Metrics {
    registry: Registry,
    rows: Family<MappingOutcome, Counter>,
    requests: Family<ConnectorStatus, Counter>,
    rate_limited: Family<ConnectorLabel, Counter>,
    rate_limit_wait: Family<ConnectorLabel, Seconds>,
    in_flight: Family<ConnectorLabel, Gauge>,
    in_flight_limit: Family<ConnectorLabel, Gauge>,
    queue: Family<MappingStatus, Gauge>,
    cycle_duration: Histograms,
    last_success: Family<MappingLabel, Timestamp>,
    paused_gauge: Family<ConnectorLabel, Gauge>,
    paused: Mutex<BTreeSet<String>>,
}

fn cycle_histogram() -> Histogram {
    // 0.1 s to about 1.8 h.
    Histogram::new(exponential_buckets(0.1, 3.0, 10))
}

/// Registers `metric` under `name` and hands it back for recording (the
/// registry keeps a clone that shares its values).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let rows = registered(
            &mut registry,
            "engine_rows",
            "Rows processed, by mapping and outcome (complete, failed, retrying, deferred, unchanged, skipped, deleted)",
            Family::default(),
        );
        let requests = registered(
            &mut registry,
            "engine_requests",
            "HTTP requests sent to a CRM, by connector and status class (2xx, 4xx, 5xx, error)",
            Family::default(),
        );
        let rate_limited = registered(
            &mut registry,
            "engine_rate_limited",
            "Answers 429 Too Many Requests from a CRM",
            Family::default(),
        );
        let rate_limit_wait = registered(
            &mut registry,
            "engine_rate_limit_wait_seconds",
            "Time requests spent waiting for the connector's rate limiter",
            Family::default(),
        );
        let in_flight = registered(
            &mut registry,
            "engine_requests_in_flight",
            "Requests sent and not yet answered",
            Family::default(),
        );
        let in_flight_limit = registered(
            &mut registry,
            "engine_in_flight_limit",
            "The adaptive cap on requests in flight (max_in_flight, halved while the CRM pushes back)",
            Family::default(),
        );
        let queue = registered(
            &mut registry,
            "engine_queue_rows",
            "Rows of a mapping's table by processing status, counted at scrape time",
            Family::default(),
        );
        let cycle_duration: Histograms = registered(
            &mut registry,
            "engine_cycle_duration_seconds",
            "How long a mapping's sync cycle took",
            Family::new_with_constructor(cycle_histogram),
        );
        let last_success = registered(
            &mut registry,
            "engine_last_success_timestamp_seconds",
            "When a mapping's last cycle without a failure ended (Unix time)",
            Family::default(),
        );
        let paused_gauge = registered(
            &mut registry,
            "engine_connector_paused",
            "1 while a connector is paused because its config looks broken",
            Family::default(),
        );
        Self {
            registry,
            rows,
            requests,
            rate_limited,
            rate_limit_wait,
            in_flight,
            in_flight_limit,
            queue,
            cycle_duration,
            last_success,
            paused_gauge,
            paused: Mutex::new(BTreeSet::new()),
        }
    }

    /// One batch's rows by outcome.
    pub fn rows(&self, mapping: &str, counts: &Counts) {
        for (outcome, n) in [
            ("complete", counts.complete),
            ("failed", counts.failed),
            ("retrying", counts.retrying),
            ("deferred", counts.deferred),
        ] {
            if n > 0 {
                self.rows
                    .get_or_create(&MappingOutcome {
                        mapping: mapping.into(),
                        outcome: outcome.into(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// Rows of `mapping` with an outcome beyond the four of [`Counts`]:
    /// `unchanged`, `skipped` (by the sync mode), `deleted` (records removed).
    pub fn more_rows(&self, mapping: &str, outcome: &str, n: u64) {
        if n > 0 {
            self.rows
                .get_or_create(&MappingOutcome {
                    mapping: mapping.into(),
                    outcome: outcome.into(),
                })
                .inc_by(n);
        }
    }

    /// One answer (`None`: no answer, a transport error).
    pub fn request(&self, connector: &str, status: Option<u16>) {
        let status_class = match status {
            Some(status) => format!("{}xx", status / 100),
            None => "error".into(),
        };
        self.requests
            .get_or_create(&ConnectorStatus {
                connector: connector.into(),
                status_class,
            })
            .inc();
        if status == Some(429) {
            self.rate_limited
                .get_or_create(&connector_label(connector))
                .inc();
        }
    }

    /// Time one request waited for the rate limiter.
    pub fn rate_limit_wait(&self, connector: &str, waited: Duration) {
        if !waited.is_zero() {
            self.rate_limit_wait
                .get_or_create(&connector_label(connector))
                .inc_by(waited.as_secs_f64());
        }
    }

    /// A request leaves; it counts as in flight until the guard drops (an
    /// answer, or a request abandoned on shutdown).
    pub fn sending(&self, connector: &str) -> Sending {
        let gauge = self
            .in_flight
            .get_or_create(&connector_label(connector))
            .clone();
        gauge.inc();
        Sending(gauge)
    }

    /// A connector's client is ready: its series start at zero, so a
    /// dashboard sees 0 rather than no data.
    pub fn connector_started(&self, connector: &str, limit: usize) {
        let label = connector_label(connector);
        let _ = self.rate_limited.get_or_create(&label);
        let _ = self.rate_limit_wait.get_or_create(&label);
        let _ = self.in_flight.get_or_create(&label);
        let _ = self.paused_gauge.get_or_create(&label);
        self.in_flight_limit(connector, limit);
    }

    /// The adaptive cap on requests in flight.
    pub fn in_flight_limit(&self, connector: &str, limit: usize) {
        self.in_flight_limit
            .get_or_create(&connector_label(connector))
            .set(limit as i64);
    }

    /// A mapping's cycle ended, after `took`; `ok` when nothing failed it.
    pub fn cycle(&self, mapping: &str, took: Duration, ok: bool) {
        let label = MappingLabel {
            mapping: mapping.into(),
        };
        self.cycle_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        if ok {
            let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
            self.last_success.get_or_create(&label).set(now);
        }
    }

    /// A connector is paused (its config looks broken) or runs again.
    pub fn paused(&self, connector: &str, paused: bool) {
        self.paused_gauge
            .get_or_create(&connector_label(connector))
            .set(i64::from(paused));
        let mut set = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if paused {
            set.insert(connector.to_string());
        } else {
            set.remove(connector);
        }
    }

    fn paused_connectors(&self) -> Vec<String> {
        let set = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        set.iter().cloned().collect()
    }

    fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// One request in flight; see [`Metrics::sending`].
pub struct Sending(Gauge);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn connector_label(connector: &str) -> ConnectorLabel {
    ConnectorLabel {
        connector: connector.into(),
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// What the endpoints need.
struct Service {
    plan: Arc<Plan>,
    store: Store,
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until shutdown.
/// Returns the bound address (port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    plan: Arc<Plan>,
    store: Store,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(Service { plan, store }));
    tokio::spawn(async move {
        let stopped = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %err, "The metrics server stopped.");
        }
    });
    tracing::info!(addr = %bound, "Serving /metrics, /healthz and /readyz.");
    Ok(bound)
}

async fn metrics(State(service): State<Arc<Service>>) -> impl IntoResponse {
    count_queues(&service).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        global().encode(),
    )
}

/// Sets the queue-depth gauges from the database; a failed count leaves the
/// last value (the database's health is `/readyz`'s to report).
async fn count_queues(service: &Service) {
    let metrics = global();
    // A snapshot mapping's source has no status columns: its rows are in its state.
    for mapping in service
        .plan
        .mappings
        .values()
        .filter(|m| m.snapshot.is_none())
    {
        let Ok(counts) = service.store.status_counts(&mapping.table).await else {
            continue;
        };
        for (status, n) in counts {
            metrics
                .queue
                .get_or_create(&MappingStatus {
                    mapping: mapping.name.clone(),
                    status: status.unwrap_or_else(|| "none".into()),
                })
                .set(n);
        }
    }
}

/// 200 when the database answers, the config is loaded (it is, once serving)
/// and no connector is paused; 503 naming what is not.
async fn readyz(State(service): State<Arc<Service>>) -> (StatusCode, String) {
    let mut problems = Vec::new();
    if let Err(err) = ping(&service.store).await {
        problems.push(format!("database unreachable: {err:#}"));
    }
    for connector in global().paused_connectors() {
        problems.push(format!(
            "connector `{connector}` is paused: its config looks broken (see the logs)"
        ));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", problems.join("\n")),
        )
    }
}

async fn ping(store: &Store) -> anyhow::Result<()> {
    let check = async {
        match store {
            Store::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Store::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        }
    };
    tokio::time::timeout(Duration::from_secs(2), check)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 2 s"))??;
    Ok(())
}
