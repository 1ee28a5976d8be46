//! Fail fast on a broken connector config.
//!
//! A wrong base URL, a revoked key or an unreachable host fails every request
//! the same way, whatever the row. Recorded row by row, such a failure would
//! burn the whole queue into `Error` (or through its retries). The probe
//! watches a connector's answers until one proves the config works, and while
//! none has, remembers the first answer that blames the config rather than a
//! row: 401, 403, a 404/405/410 from an endpoint whose path names no row,
//! a DNS, connection or TLS failure. The engine then hands the claimed rows
//! back untouched and stops the connector with one message and a likely cause.
//!
//! A 404 from a path that names the row (`/contacts/{{key}}`) is that row's
//! answer (not found), never the config's; and any other answer (a 2xx, a 400
//! about a field, a 429, a 5xx) proves the endpoint and credentials work, so
//! after it one bad row fails only itself.

use std::sync::Mutex;

/// After this many config-blaming answers with none proving the config, the
/// client stops sending: more of the same would only spend the rate limit.
const TRIP_AFTER: u32 = 3;

/// What one request's answer says about the connector's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint and credentials work.
    Proves,
    /// Says nothing either way (a timeout, a row's own 404).
    Neutral,
}

/// Why a connector looks misconfigured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultCause {
    /// An HTTP status that blames the config (401, 403, 404, ...).
    Status(u16),
    /// The host could not be reached (DNS, refused connection).
    Unreachable(String),
    /// The TLS handshake failed.
    Tls(String),
}

/// The first answer that blamed the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFault {
    /// `POST`, `GET`, ...
    pub method: String,
    /// The request URL without its query (which may carry a key) or user info.
    pub url: String,
    /// What went wrong.
    pub cause: FaultCause,
}

#[derive(Debug, Default)]
struct State {
    proven: bool,
    faults: u32,
    first: Option<ConfigFault>,
}

/// One connector's probe, shared by every request it sends.
#[derive(Debug, Default)]
pub struct ConfigProbe {
    state: Mutex<State>,
}

impl ConfigProbe {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes an HTTP answer. `ruled`: a connector rule matched it (the CRM's
    /// documented meaning, e.g. a lookup's 404 is "not found"); `literal_path`:
    /// the request's path names no row.
    pub fn observe_status(
        &self,
        status: u16,
        ruled: bool,
        literal_path: bool,
        method: &str,
        url: &reqwest::Url,
    ) {
        match status_verdict(status, ruled, literal_path) {
            Ok(Verdict::Proves) => self.state().proven = true,
            Ok(Verdict::Neutral) => {}
            Err(()) => self.fault(method, url, FaultCause::Status(status)),
        }
    }

    /// Notes a request that got no answer.
    pub fn observe_transport(&self, err: &reqwest::Error, method: &str, url: &reqwest::Url) {
        if !err.is_connect() {
            return;
        }
        let text = error_text(err);
        let lower = text.to_lowercase();
        let cause = if ["certificate", "tls", "handshake", "ssl"]
            .iter()
            .any(|word| lower.contains(word))
        {
            FaultCause::Tls(text)
        } else {
            FaultCause::Unreachable(text)
        };
        self.fault(method, url, cause);
    }

    fn fault(&self, method: &str, url: &reqwest::Url, cause: FaultCause) {
        let mut state = self.state();
        state.faults += 1;
        if state.first.is_none() {
            state.first = Some(ConfigFault {
                method: method.to_string(),
                url: shown_url(url),
                cause,
            });
        }
    }

    /// Whether to stop sending: several answers blamed the config, none proved it.
    pub fn tripped(&self) -> bool {
        let state = self.state();
        !state.proven && state.faults >= TRIP_AFTER
    }

    /// The config fault, while no answer has proved the config.
    pub fn fault_found(&self) -> Option<ConfigFault> {
        let state = self.state();
        if state.proven {
            None
        } else {
            state.first.clone()
        }
    }

    /// Forgets what was seen, so that the next requests probe afresh (a
    /// service retrying a paused connector).
    pub fn reset(&self) {
        *self.state() = State::default();
    }
}

/// `Err(())` when the status blames the config.
fn status_verdict(status: u16, ruled: bool, literal_path: bool) -> Result<Verdict, ()> {
    match status {
        401 | 403 | 407 if !ruled => Err(()),
        404 | 405 | 410 if !ruled && literal_path => Err(()),
        401 | 403 | 404 | 405 | 407 | 410 => Ok(Verdict::Neutral),
        _ => Ok(Verdict::Proves),
    }
}

/// The URL as it may be shown: no query (an `api_key_query` secret), no user info.
fn shown_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// The error's innermost useful causes, without the URL (shown apart).
fn error_text(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut causes = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.iter().any(|c: &String| c.contains(&text)) {
            causes.push(text);
        }
        source = cause.source();
    }
    if causes.is_empty() {
        "connection failed".into()
    } else {
        causes.join(": ")
    }
}

impl ConfigFault {
    /// What probably went wrong and what to check. `base_url_env` overrides the
    /// base URL; `secrets` are the names of the auth variables.
    pub fn hint(&self, connector: &str, base_url_env: &str, secrets: &[String]) -> String {
        let secrets = if secrets.is_empty() {
            "the connector's [auth]".to_string()
        } else {
            secrets.join(", ")
        };
        let base = format!("{base_url_env} (or base_url in connectors/{connector}.toml)");
        match &self.cause {
            FaultCause::Status(401) => {
                format!("the credentials were rejected: check {secrets}")
            }
            FaultCause::Status(403) => format!(
                "the credentials lack a permission (scope) this endpoint needs: check {secrets} and its scopes"
            ),
            FaultCause::Status(407) => "a proxy asks for credentials".into(),
            FaultCause::Status(_) => format!(
                "no such endpoint at this URL: the base URL is probably wrong; check {base}, e.g. a missing path prefix such as /v3"
            ),
            FaultCause::Unreachable(_) => {
                format!("the host cannot be reached: check {base} and the network")
            }
            FaultCause::Tls(_) => format!(
                "the TLS handshake failed: check {base} (https to a plain-http port?) and the host's certificate"
            ),
        }
    }

    /// `HTTP 404 Not Found`, or the transport error.
    pub fn answer(&self) -> String {
        match &self.cause {
            FaultCause::Status(status) => {
                let text = reqwest::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason());
                match text {
                    Some(text) => format!("answered HTTP {status} {text}"),
                    None => format!("answered HTTP {status}"),
                }
            }
            FaultCause::Unreachable(text) => format!("could not connect ({text})"),
            FaultCause::Tls(text) => format!("failed the TLS handshake ({text})"),
        }
    }
}

/// A connector stopped because its config looks broken; its claimed rows were
/// handed back to `Queued` without spending a retry.
#[derive(Debug, Clone)]
pub struct ConnectorPaused {
    /// The connector's name.
    pub connector: String,
    /// The first answer that blamed the config.
    pub fault: ConfigFault,
    /// Its likely cause, as a sentence.
    pub hint: String,
}

impl std::fmt::Display for ConnectorPaused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connector `{}` stopped: {} {} {} and no request has succeeded. Likely cause: {}. \
             The claimed rows are back in Queued; no retry was spent.",
            self.connector,
            self.fault.method,
            self.fault.url,
            self.fault.answer(),
            self.hint
        )
    }
}

impl std::error::Error for ConnectorPaused {}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> reqwest::Url {
        "http://user:pw@crm.test/contacts?api_token=secret"
            .parse()
            .unwrap()
    }

    #[test]
    fn a_404_blames_the_config_only_from_an_endpoint_that_names_no_row() {
        assert_eq!(status_verdict(404, false, true), Err(()));
        assert_eq!(status_verdict(404, false, false), Ok(Verdict::Neutral));
        assert_eq!(status_verdict(404, true, true), Ok(Verdict::Neutral));
        assert_eq!(status_verdict(401, false, false), Err(()));
        assert_eq!(status_verdict(400, false, true), Ok(Verdict::Proves));
        assert_eq!(status_verdict(503, false, true), Ok(Verdict::Proves));
    }

    #[test]
    fn one_proving_answer_clears_the_fault_for_good() {
        let probe = ConfigProbe::default();
        for _ in 0..TRIP_AFTER {
            probe.observe_status(404, false, true, "POST", &url());
        }
        assert!(probe.tripped());
        let fault = probe.fault_found().unwrap();
        assert_eq!(fault.url, "http://crm.test/contacts");
        probe.observe_status(201, false, true, "POST", &url());
        assert!(!probe.tripped());
        assert_eq!(probe.fault_found(), None);
        probe.observe_status(404, false, true, "POST", &url());
        assert_eq!(probe.fault_found(), None);
    }
}
