//! The sandbox: a local, in-memory imitation of the HubSpot CRM contacts v3 API
//! and the Brevo contacts v3 API, both served on one port.
//!
//! HubSpot lives under `/crm/v3/objects/contacts...` (connector base URL
//! `http://127.0.0.1:PORT`), Brevo under `/v3/contacts...` (base URL
//! `http://127.0.0.1:PORT/v3`). Both answer in the vendor's own status codes,
//! headers and error bodies, including auth failures, rate limits (429),
//! HubSpot's search index lag and injected 502/503 failures.
//!
//! Inspection endpoints (no auth, no limits, not counted in the stats):
//! `GET /_sandbox/hubspot/contacts`, `GET /_sandbox/brevo/contacts`,
//! `GET /_sandbox/stats`, `POST /_sandbox/reset` and
//! `POST /_sandbox/clock/advance` with `{"ms": N}` (moves the sandbox's
//! simulated clock forward, which drives the rate-limit windows, the daily
//! limit, the search index lag and the record timestamps).

mod brevo;
mod clock;
mod common;
mod gate;
mod hubspot;
mod inspect;
mod limits;
mod state;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use state::App;

/// How the sandbox behaves; also the flags of `engine sandbox`.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxOptions {
    /// Port on 127.0.0.1 to listen on; 0 picks a free port.
    #[arg(long, default_value_t = 4010)]
    pub port: u16,
    /// Milliseconds added to every CRM response.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction of CRM requests answered 502/503 at random (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// HubSpot requests per rolling 10 s (real: 100 or 190); unset = unlimited.
    #[arg(long)]
    pub hubspot_per_10s: Option<u32>,
    /// HubSpot requests per day (real: 250000); unset = unlimited.
    #[arg(long)]
    pub hubspot_daily: Option<u32>,
    /// HubSpot search requests per second (real: 5); unset = unlimited.
    #[arg(long)]
    pub hubspot_search_per_s: Option<u32>,
    /// Brevo `/v3/contacts*` requests per rolling second (real: 10); unset = unlimited.
    #[arg(long)]
    pub brevo_per_s: Option<u32>,
    /// Brevo requests per rolling hour to endpoints outside `/v3/contacts`
    /// (`/v3/processes`; real: 100 on the general tier); unset = unlimited.
    #[arg(long)]
    pub brevo_other_per_hour: Option<u32>,
    /// Milliseconds before a Brevo import is applied and its process
    /// `completed` (Brevo publishes no figure; an assumption).
    #[arg(long, default_value_t = 1_000)]
    pub brevo_import_delay_ms: u64,
    /// Microseconds per imported contact added to that delay.
    #[arg(long, default_value_t = 100)]
    pub brevo_import_us_per_row: u64,
    /// HubSpot search index lag: milliseconds before a write shows in search.
    #[arg(long, default_value_t = 0)]
    pub search_lag_ms: u64,
    /// Only this HubSpot bearer token is accepted; unset = any non-empty token.
    #[arg(long)]
    pub hubspot_token: Option<String>,
    /// Only this Brevo `api-key` is accepted; unset = any non-empty key.
    #[arg(long)]
    pub brevo_api_key: Option<String>,
    /// Extra known HubSpot property names, beyond the defaults.
    #[arg(long, value_delimiter = ',')]
    pub hubspot_properties: Vec<String>,
    /// batch/upsert answers 207 per item instead of an all-or-nothing 400.
    #[arg(long)]
    pub hubspot_upsert_partial: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            port: 4010,
            latency_ms: 0,
            fail_rate: 0.0,
            hubspot_per_10s: None,
            hubspot_daily: None,
            hubspot_search_per_s: None,
            brevo_per_s: None,
            brevo_other_per_hour: None,
            brevo_import_delay_ms: 1_000,
            brevo_import_us_per_row: 100,
            search_lag_ms: 0,
            hubspot_token: None,
            brevo_api_key: None,
            hubspot_properties: Vec::new(),
            hubspot_upsert_partial: false,
        }
    }
}

/// A running sandbox server.
pub struct Sandbox {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    app: Arc<App>,
}

impl Sandbox {
    /// Binds `127.0.0.1:port` and serves in a tokio task.
    pub async fn start(opts: SandboxOptions) -> anyhow::Result<Sandbox> {
        let listener = TcpListener::bind(("127.0.0.1", opts.port))
            .await
            .with_context(|| format!("binding the sandbox to 127.0.0.1:{}", opts.port))?;
        let addr = listener.local_addr()?;
        let app = Arc::new(App::new(opts));
        let (stop, stopped) = oneshot::channel::<()>();
        let router = router(app.clone());
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(err) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%err, "sandbox server stopped");
            }
        });
        Ok(Sandbox {
            addr,
            stop: Some(stop),
            task: Some(task),
            app,
        })
    }

    /// `http://127.0.0.1:PORT`; Brevo's base URL is this plus `/v3`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The stored HubSpot contacts, sorted by id (as `GET /_sandbox/hubspot/contacts`).
    pub fn hubspot_contacts(&self) -> Vec<serde_json::Value> {
        self.app.hubspot_contacts()
    }

    /// The stored Brevo contacts, sorted by id (as `GET /_sandbox/brevo/contacts`).
    pub fn brevo_contacts(&self) -> Vec<serde_json::Value> {
        self.app.brevo_contacts()
    }

    /// Request counters (as `GET /_sandbox/stats`).
    pub fn stats(&self) -> serde_json::Value {
        self.app.stats_json()
    }

    /// Moves the simulated clock forward (as `POST /_sandbox/clock/advance`).
    pub fn advance_clock(&self, by: Duration) {
        self.app.clock.advance(by);
    }

    /// Stops serving and waits for open connections to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// For `engine sandbox`: prints the base URL and serves until Ctrl-C.
pub async fn serve_forever(opts: SandboxOptions) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(opts).await?;
    let base = sandbox.base_url();
    println!("{base}");
    eprintln!("sandbox: HubSpot base_url {base}, Brevo base_url {base}/v3; Ctrl-C stops");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    sandbox.shutdown().await;
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .merge(hubspot::routes(app.clone()))
        .merge(brevo::routes(app.clone()))
        .merge(inspect::routes(app))
}
