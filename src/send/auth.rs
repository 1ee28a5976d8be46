//! Applying a connector's authentication to requests. Secret values are read from
//! the environment once, kept in [`Secret`] (whose Debug prints `***`), and never logged.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::RequestBuilder;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::plan::{AuthPlan, Env, UserName};

/// A secret value: formatting never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Secret {
    fn expose(&self) -> &str {
        &self.0
    }
}

fn secret(env: &dyn Env, name: &str) -> anyhow::Result<Secret> {
    env.var(name).map(Secret).with_context(|| {
        format!("environment variable `{name}` is not set (put it in the environment or .env)")
    })
}

/// Authentication with its secrets resolved.
#[derive(Debug)]
pub enum Authenticator {
    /// Nothing to add.
    None,
    /// `Authorization: <scheme> <token>`.
    Bearer { scheme: String, token: Secret },
    /// A header carrying a key after a literal prefix.
    Header {
        name: String,
        prefix: String,
        key: Secret,
    },
    /// A query parameter carrying a key.
    Query(String, Secret),
    /// HTTP basic.
    Basic(Secret, Secret),
    /// OAuth 2 refresh flow.
    OAuth(Box<OAuth>),
}

/// A header value holding a secret: marked sensitive, so that it is left out
/// of any debug output of the request.
fn secret_header(text: String) -> anyhow::Result<reqwest::header::HeaderValue> {
    // The error must not quote the value: it holds the secret.
    let mut value = reqwest::header::HeaderValue::try_from(text)
        .map_err(|_| anyhow::anyhow!("the credential is not a valid HTTP header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// OAuth 2 refresh-token state.
#[derive(Debug)]
pub struct OAuth {
    scheme: String,
    token_url: String,
    client_id: Secret,
    client_secret: Secret,
    refresh_token: Mutex<Secret>,
    scope: Option<String>,
    access_token_pointer: String,
    expires_in_pointer: String,
    base_url_pointer: Option<String>,
    margin: Duration,
    current: Mutex<Option<Token>>,
}

#[derive(Debug, Clone)]
struct Token {
    access: Secret,
    expires_at: Option<Instant>,
    base_url: Option<String>,
}

impl Authenticator {
    /// Resolves every secret the auth kind names; fails listing the missing variable.
    pub fn resolve(auth: &AuthPlan, env: &dyn Env) -> anyhow::Result<Self> {
        Ok(match auth {
            AuthPlan::None => Self::None,
            AuthPlan::Bearer { scheme, token_env } => Self::Bearer {
                scheme: scheme.clone(),
                token: secret(env, token_env)?,
            },
            AuthPlan::Header {
                name,
                prefix,
                key_env,
            } => Self::Header {
                name: name.clone(),
                prefix: prefix.clone(),
                key: secret(env, key_env)?,
            },
            AuthPlan::Query { param, key_env } => Self::Query(param.clone(), secret(env, key_env)?),
            AuthPlan::Basic {
                username,
                password_env,
            } => {
                let user = match username {
                    UserName::Env(name) => secret(env, name)?,
                    UserName::Literal(literal) => Secret(literal.clone()),
                };
                Self::Basic(user, secret(env, password_env)?)
            }
            AuthPlan::OAuth(plan) => Self::OAuth(Box::new(OAuth {
                scheme: plan.scheme.clone(),
                token_url: plan.token_url.clone(),
                client_id: secret(env, &plan.client_id_env)?,
                client_secret: secret(env, &plan.client_secret_env)?,
                refresh_token: Mutex::new(secret(env, &plan.refresh_token_env)?),
                scope: plan.scope.clone(),
                access_token_pointer: plan.access_token_pointer.clone(),
                expires_in_pointer: plan.expires_in_pointer.clone(),
                base_url_pointer: plan.base_url_pointer.clone(),
                margin: plan.refresh_margin,
                current: Mutex::new(None),
            })),
        })
    }

    /// Adds credentials to a request; for OAuth, fetches or refreshes the token first.
    pub async fn apply(
        &self,
        http: &reqwest::Client,
        request: RequestBuilder,
    ) -> anyhow::Result<RequestBuilder> {
        Ok(match self {
            Self::None => request,
            Self::Bearer { scheme, token } => request.header(
                reqwest::header::AUTHORIZATION,
                secret_header(format!("{scheme} {}", token.expose()))?,
            ),
            Self::Header { name, prefix, key } => request.header(
                name.as_str(),
                secret_header(format!("{prefix}{}", key.expose()))?,
            ),
            Self::Query(name, key) => request.query(&[(name.as_str(), key.expose())]),
            Self::Basic(user, password) => {
                request.basic_auth(user.expose(), Some(password.expose()))
            }
            Self::OAuth(oauth) => {
                let token = oauth.token(http).await?;
                request.header(
                    reqwest::header::AUTHORIZATION,
                    secret_header(format!("{} {}", oauth.scheme, token.access.expose()))?,
                )
            }
        })
    }

    /// The base URL the token response named (Salesforce's instance URL), if any.
    pub async fn base_url(&self, http: &reqwest::Client) -> anyhow::Result<Option<String>> {
        match self {
            Self::OAuth(oauth) => Ok(oauth.token(http).await?.base_url),
            _ => Ok(None),
        }
    }

    /// A 401 arrived: drop a cached OAuth token so the next request refreshes it.
    pub async fn invalidate(&self) {
        if let Self::OAuth(oauth) = self {
            *oauth.current.lock().await = None;
        }
    }
}

/// A token response is a few hundred bytes; anything near this is hostile.
const MAX_TOKEN_RESPONSE_BYTES: u64 = 1024 * 1024;

impl OAuth {
    async fn token(&self, http: &reqwest::Client) -> anyhow::Result<Token> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && token.expires_at.is_none_or(|at| {
                Instant::now()
                    .checked_add(self.margin)
                    .is_some_and(|soon| soon < at)
            })
        {
            return Ok(token.clone());
        }
        let token = self.refresh(http).await?;
        *current = Some(token.clone());
        Ok(token)
    }

    async fn refresh(&self, http: &reqwest::Client) -> anyhow::Result<Token> {
        let refresh = self.refresh_token.lock().await.clone();
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh.expose().to_string()),
            ("client_id", self.client_id.expose().to_string()),
            ("client_secret", self.client_secret.expose().to_string()),
        ];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.clone()));
        }
        let response = http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .context("token request failed")?;
        let status = response.status();
        let raw = match super::body::read_capped(response, MAX_TOKEN_RESPONSE_BYTES).await {
            Ok(raw) => raw,
            Err(super::body::BodyError::TooLarge { cap }) => {
                bail!("token refresh answered {status} with a body over {cap} bytes")
            }
            Err(super::body::BodyError::Read(err)) => {
                return Err(err).context("token response did not arrive whole");
            }
        };
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        if !status.is_success() {
            let reason = body
                .get("error_description")
                .or_else(|| body.get("error"))
                .cloned()
                .unwrap_or(Value::Null);
            bail!("token refresh answered {status}: {reason}");
        }
        let access = body
            .pointer(&self.access_token_pointer)
            .and_then(Value::as_str)
            .with_context(|| format!("token response has no `{}`", self.access_token_pointer))?;
        // Providers that rotate refresh tokens invalidate the old one: keep the new one.
        if let Some(rotated) = body.get("refresh_token").and_then(Value::as_str) {
            *self.refresh_token.lock().await = Secret(rotated.to_string());
        }
        let expires_at = body
            .pointer(&self.expires_in_pointer)
            .and_then(Value::as_u64)
            // A lifetime too long to represent never expires (refreshed on a 401).
            .and_then(|s| Instant::now().checked_add(Duration::from_secs(s)));
        let base_url = self
            .base_url_pointer
            .as_ref()
            .and_then(|p| body.pointer(p))
            .and_then(Value::as_str)
            .map(String::from);
        Ok(Token {
            access: Secret(access.to_string()),
            expires_at,
            base_url,
        })
    }
}
