//! Every sync in one process: `engine run --all [--watch]` runs each connector
//! that has mappings at once. A connector's mappings share one client, so one
//! rate limiter and one in-flight cap pace them together (two mappings on one
//! CRM account in two processes would each pace to the whole limit); each
//! mapping still cycles on its own `interval_secs` and holds its own
//! `max_instances` slot.

use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::engine::{RunOptions, RunSummary, run_connector};
use crate::plan::{Env, Plan};
use crate::store::Store;

/// The connectors some mapping syncs to, in name order.
pub fn connectors_in_use(plan: &Plan) -> Vec<String> {
    let mut names: Vec<String> = plan
        .mappings
        .values()
        .map(|m| m.connector.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What one connector's run came to.
pub struct ConnectorRun {
    /// The connector's name.
    pub connector: String,
    /// Its counts, or why it stopped.
    pub result: anyhow::Result<Arc<RunSummary>>,
}

/// Runs every connector in use until each is done (or, with `--watch`, until
/// shutdown). One connector failing does not stop the others: a service keeps
/// syncing what it can, and the caller reports each failure.
pub async fn run_all(
    plan: Arc<Plan>,
    store: Store,
    env: &dyn Env,
    clock: Arc<dyn Clock>,
    options: RunOptions,
    shutdown: watch::Receiver<bool>,
) -> Vec<ConnectorRun> {
    let runs = connectors_in_use(&plan).into_iter().map(|connector| {
        let plan = plan.clone();
        let store = store.clone();
        let clock = clock.clone();
        let options = options.clone();
        let shutdown = shutdown.clone();
        async move {
            let result =
                run_connector(plan, &connector, store, env, clock, options, shutdown).await;
            ConnectorRun { connector, result }
        }
    });
    futures::future::join_all(runs).await
}
