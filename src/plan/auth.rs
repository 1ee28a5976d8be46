//! A connector's authentication as the runtime applies it: what goes where,
//! every default resolved, and the secrets named by the environment variables
//! holding them. Their values are read when the client is built
//! (`crate::send::auth`), never kept in the plan.

use std::time::Duration;

use crate::config::connector::Auth;

/// How requests are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPlan {
    /// Nothing to add.
    None,
    /// `Authorization: <scheme> <token>`.
    Bearer {
        /// The word before the token, e.g. `Bearer`, `Zoho-oauthtoken`.
        scheme: String,
        token_env: String,
    },
    /// A header carrying a key after a literal prefix.
    Header {
        name: String,
        /// Empty unless the connector writes one (e.g. `Token token=`).
        prefix: String,
        key_env: String,
    },
    /// A query parameter carrying a key.
    Query { param: String, key_env: String },
    /// HTTP basic.
    Basic {
        username: UserName,
        password_env: String,
    },
    /// OAuth 2 refresh-token flow.
    OAuth(Box<OAuthPlan>),
}

/// Where HTTP basic's user name comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserName {
    /// Written in the file: not a secret (Mailchimp accepts any).
    Literal(String),
    /// Held by this environment variable.
    Env(String),
}

/// The OAuth 2 refresh-token flow: an access token is fetched from
/// `token_url` and refreshed `refresh_margin` before it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthPlan {
    pub token_url: String,
    pub client_id_env: String,
    pub client_secret_env: String,
    pub refresh_token_env: String,
    pub scope: Option<String>,
    /// Where the access token is in the token response.
    pub access_token_pointer: String,
    /// Where the token's lifetime in seconds is in the token response.
    pub expires_in_pointer: String,
    /// Where the base URL is in the token response, when it names one
    /// (Salesforce's instance URL).
    pub base_url_pointer: Option<String>,
    pub refresh_margin: Duration,
    /// The word before the access token in `Authorization`.
    pub scheme: String,
}

impl AuthPlan {
    /// `auth` as the runtime applies it; `None` for basic auth without a user
    /// name, which the checks report.
    pub(super) fn from_config(auth: &Auth) -> Option<Self> {
        Some(match auth {
            Auth::None => Self::None,
            Auth::Bearer { token_env, scheme } => Self::Bearer {
                scheme: scheme.clone(),
                token_env: token_env.clone(),
            },
            Auth::ApiKeyHeader {
                header,
                key_env,
                prefix,
            } => Self::Header {
                name: header.clone(),
                prefix: prefix.clone().unwrap_or_default(),
                key_env: key_env.clone(),
            },
            Auth::ApiKeyQuery { param, key_env } => Self::Query {
                param: param.clone(),
                key_env: key_env.clone(),
            },
            Auth::Basic {
                username,
                username_env,
                password_env,
            } => Self::Basic {
                // A variable, when named, wins over a literal.
                username: match (username, username_env) {
                    (_, Some(name)) => UserName::Env(name.clone()),
                    (Some(literal), None) => UserName::Literal(literal.clone()),
                    (None, None) => return None,
                },
                password_env: password_env.clone(),
            },
            Auth::Oauth2Refresh {
                token_url,
                client_id_env,
                client_secret_env,
                refresh_token_env,
                scope,
                access_token_pointer,
                expires_in_pointer,
                base_url_pointer,
                refresh_margin_secs,
                scheme,
            } => Self::OAuth(Box::new(OAuthPlan {
                token_url: token_url.clone(),
                client_id_env: client_id_env.clone(),
                client_secret_env: client_secret_env.clone(),
                refresh_token_env: refresh_token_env.clone(),
                scope: scope.clone(),
                access_token_pointer: access_token_pointer.clone(),
                expires_in_pointer: expires_in_pointer.clone(),
                base_url_pointer: base_url_pointer.clone(),
                refresh_margin: Duration::from_secs(*refresh_margin_secs),
                scheme: scheme.clone(),
            })),
        })
    }
}

/// The names of the environment variables holding `auth`'s secrets, in a
/// fixed order: hints name them, and the shared budget's key hashes their
/// values in it.
pub fn secret_env_names(auth: &AuthPlan) -> Vec<String> {
    match auth {
        AuthPlan::None => vec![],
        AuthPlan::Bearer { token_env, .. } => vec![token_env.clone()],
        AuthPlan::Header { key_env, .. } | AuthPlan::Query { key_env, .. } => {
            vec![key_env.clone()]
        }
        AuthPlan::Basic {
            username,
            password_env,
        } => {
            let mut names = vec![password_env.clone()];
            if let UserName::Env(name) = username {
                names.push(name.clone());
            }
            names
        }
        AuthPlan::OAuth(oauth) => vec![
            oauth.client_id_env.clone(),
            oauth.client_secret_env.clone(),
            oauth.refresh_token_env.clone(),
        ],
    }
}
