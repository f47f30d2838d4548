//! Who may follow a node's rules: the enforcer running on that node, proven by
//! its projected ServiceAccount token.
//!
//! [`TokenReviewAuthenticator`] asks the API server (`authentication.k8s.io/v1`
//! TokenReview) whether the token is valid, checks that it belongs to the
//! enforcer's ServiceAccount, and finds the node of the pod the token is bound to:
//! from the `authentication.kubernetes.io/node-name` extra (bound tokens carry it
//! since Kubernetes 1.30), else by reading the pod named in
//! `authentication.kubernetes.io/pod-name` (and checking its uid). A token not
//! bound to a pod is refused: only a pod's token says which node it runs on.
//!
//! [`StaticTokens`] maps tokens to nodes from a file, for the manifest-directory
//! source (the lab), so the same refusal paths run without an API server.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use thiserror::Error;

/// The extra key bound tokens carry the node name in (Kubernetes ≥ 1.30).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// The extra key bound tokens carry the pod name in.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The extra key bound tokens carry the pod uid in.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// An enforcer that proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The authenticated user (`system:serviceaccount:NS:NAME`, or `static:NODE`).
    pub user: String,
    /// The node it may follow.
    pub node: String,
    /// `namespace/name` of its pod, when known.
    pub pod: Option<String>,
}

/// Why an enforcer is refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token, or one the authority does not accept.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// A valid token of someone who is not the enforcer.
    #[error("user {user} is not the enforcer's ServiceAccount {expected}")]
    WrongUser { user: String, expected: String },
    /// The enforcer asks for a node other than its own.
    #[error("asks for node {asked}, but its pod runs on node {actual}")]
    WrongNode { asked: String, actual: String },
    /// The token is not bound to a pod (or its pod is gone), so its node is unknown.
    #[error("cannot tell the token's node: {0}")]
    NoNode(String),
    /// The authority could not be asked now (retry later).
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The `reason` label of the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated(_) => "unauthenticated",
            AuthError::WrongUser { .. } => "wrong_user",
            AuthError::WrongNode { .. } => "wrong_node",
            AuthError::NoNode(_) => "no_node",
            AuthError::Unavailable(_) => "auth_unavailable",
        }
    }

    /// The gRPC status the enforcer gets.
    pub fn status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            AuthError::Unauthenticated(_) => tonic::Status::unauthenticated(msg),
            AuthError::WrongUser { .. } | AuthError::WrongNode { .. } | AuthError::NoNode(_) => {
                tonic::Status::permission_denied(msg)
            }
            AuthError::Unavailable(_) => tonic::Status::unavailable(msg),
        }
    }
}

/// The boxed future an [`Authenticator`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'a>>;

/// Decides whether the bearer of `token` may follow `node`'s rules.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str, node: &'a str) -> AuthFuture<'a>;
}

/// Checks tokens with TokenReviews against the API server.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: Client,
    /// `system:serviceaccount:NS:NAME` of the enforcers.
    user: String,
    /// Audiences the token must be valid for (empty: the API server's default).
    audiences: Vec<String>,
}

/// Why a TokenReview did not authenticate a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewFailure {
    /// The API server could not be asked.
    Unavailable(String),
    /// It was asked and said no (its reason, when it gave one).
    Unauthenticated(String),
}

/// Asks the API server (TokenReview) whom `token` belongs to, for `audiences` (empty: the
/// API server's default); shared by the enforcer stream and the audit query API.
pub async fn token_review(
    client: &Client,
    token: &str,
    audiences: &[String],
) -> Result<UserInfo, ReviewFailure> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
        },
        ..TokenReview::default()
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| ReviewFailure::Unavailable(format!("TokenReview failed: {e}")))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the API server did not authenticate the token".to_string());
        return Err(ReviewFailure::Unauthenticated(why));
    }
    Ok(status.user.unwrap_or_default())
}

impl TokenReviewAuthenticator {
    /// `service_account` is `system:serviceaccount:NS:NAME` or `NS:NAME`.
    pub fn new(client: Client, service_account: &str, audiences: Vec<String>) -> Self {
        let user = if service_account.starts_with("system:serviceaccount:") {
            service_account.to_string()
        } else {
            format!("system:serviceaccount:{service_account}")
        };
        TokenReviewAuthenticator {
            client,
            user,
            audiences,
        }
    }

    /// The user enforcer tokens must authenticate as.
    pub fn user(&self) -> &str {
        &self.user
    }

    async fn review(&self, token: &str, node: &str) -> Result<Identity, AuthError> {
        let user_info = token_review(&self.client, token, &self.audiences)
            .await
            .map_err(|e| match e {
                ReviewFailure::Unavailable(why) => AuthError::Unavailable(why),
                ReviewFailure::Unauthenticated(why) => AuthError::Unauthenticated(why),
            })?;
        let user = user_info.username.unwrap_or_default();
        if user != self.user {
            return Err(AuthError::WrongUser {
                user,
                expected: self.user.clone(),
            });
        }
        let extra = user_info.extra.unwrap_or_default();
        let first = |key: &str| -> Option<String> {
            extra
                .get(key)
                .and_then(|v| v.first())
                .filter(|s| !s.is_empty())
                .cloned()
        };
        // system:serviceaccount:NS:NAME: the pod is in the ServiceAccount's namespace.
        let namespace = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split(':').next())
            .unwrap_or_default()
            .to_string();
        let pod_name = first(EXTRA_POD_NAME);
        let pod = pod_name.as_ref().map(|p| format!("{namespace}/{p}"));
        let actual = match first(EXTRA_NODE_NAME) {
            Some(n) => n,
            None => {
                let Some(pod_name) = pod_name else {
                    return Err(AuthError::NoNode(
                        "the token is not bound to a pod (mount a projected ServiceAccount token)"
                            .to_string(),
                    ));
                };
                self.pod_node(&namespace, &pod_name, first(EXTRA_POD_UID).as_deref())
                    .await?
            }
        };
        if actual != node {
            return Err(AuthError::WrongNode {
                asked: node.to_string(),
                actual,
            });
        }
        Ok(Identity {
            user,
            node: actual,
            pod,
        })
    }

    /// The node of the pod a token is bound to (older API servers).
    async fn pod_node(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<String, AuthError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = match api.get_opt(name).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(AuthError::NoNode(format!(
                    "the token's pod {namespace}/{name} does not exist"
                )))
            }
            Err(e) => {
                return Err(AuthError::Unavailable(format!(
                    "reading pod {namespace}/{name}: {e}"
                )))
            }
        };
        if let Some(uid) = uid {
            if pod.metadata.uid.as_deref() != Some(uid) {
                return Err(AuthError::NoNode(format!(
                    "the token's pod {namespace}/{name} (uid {uid}) was replaced"
                )));
            }
        }
        pod.spec
            .and_then(|s| s.node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                AuthError::NoNode(format!(
                    "the token's pod {namespace}/{name} is not scheduled"
                ))
            })
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str, node: &'a str) -> AuthFuture<'a> {
        Box::pin(self.review(token, node))
    }
}

/// Tokens mapped to the one node each may follow (the lab's stand-in for
/// TokenReview). File format: one `TOKEN NODE` per line; blank lines and lines
/// starting with `#` are ignored.
#[derive(Clone, Debug, Default)]
pub struct StaticTokens {
    nodes: BTreeMap<String, String>,
}

/// A static token file that cannot be used.
#[derive(Debug, Error)]
pub enum TokenFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: want `TOKEN NODE`")]
    Line { path: String, line: usize },
}

impl StaticTokens {
    pub fn new<I, T, N>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (T, N)>,
        T: Into<String>,
        N: Into<String>,
    {
        StaticTokens {
            nodes: pairs
                .into_iter()
                .map(|(t, n)| (t.into(), n.into()))
                .collect(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, TokenFileError> {
        let mut nodes = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(token), Some(node), None) => {
                    nodes.insert(token.to_string(), node.to_string());
                }
                _ => {
                    return Err(TokenFileError::Line {
                        path: origin.to_string(),
                        line: i + 1,
                    })
                }
            }
        }
        Ok(StaticTokens { nodes })
    }

    fn check(&self, token: &str, node: &str) -> Result<Identity, AuthError> {
        // Compare every known token in full, so timing does not tell how much of a
        // guess was right.
        let mut found = None;
        for (known, known_node) in &self.nodes {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(known_node);
            }
        }
        let Some(actual) = found else {
            return Err(AuthError::Unauthenticated("unknown token".to_string()));
        };
        if actual != node {
            return Err(AuthError::WrongNode {
                asked: node.to_string(),
                actual: actual.clone(),
            });
        }
        Ok(Identity {
            user: format!("static:{actual}"),
            node: actual.clone(),
            pod: None,
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str, node: &'a str) -> AuthFuture<'a> {
        Box::pin(std::future::ready(self.check(token, node)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_tokens_accept_their_node_only() {
        let tokens = StaticTokens::parse("# lab\n\ntok-a node-a\ntok-b  node-b\n", "t").unwrap();
        let id = tokens.authenticate("tok-a", "node-a").await.unwrap();
        assert_eq!(id.node, "node-a");
        assert_eq!(
            tokens.authenticate("tok-a", "node-b").await,
            Err(AuthError::WrongNode {
                asked: "node-b".into(),
                actual: "node-a".into()
            })
        );
        assert!(matches!(
            tokens.authenticate("tok-c", "node-a").await,
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            tokens.authenticate("tok-", "node-a").await,
            Err(AuthError::Unauthenticated(_))
        ));
    }

    #[test]
    fn static_token_file_errors_name_the_line() {
        let err = StaticTokens::parse("a b\nonly-one\n", "tokens.txt").unwrap_err();
        assert_eq!(err.to_string(), "tokens.txt:2: want `TOKEN NODE`");
    }

    #[test]
    fn refusals_map_to_statuses() {
        use tonic::Code;
        let cases = [
            (
                AuthError::Unauthenticated("x".into()),
                Code::Unauthenticated,
            ),
            (
                AuthError::WrongUser {
                    user: "u".into(),
                    expected: "e".into(),
                },
                Code::PermissionDenied,
            ),
            (
                AuthError::WrongNode {
                    asked: "a".into(),
                    actual: "b".into(),
                },
                Code::PermissionDenied,
            ),
            (AuthError::NoNode("x".into()), Code::PermissionDenied),
            (AuthError::Unavailable("x".into()), Code::Unavailable),
        ];
        for (err, code) in cases {
            assert_eq!(err.status().code(), code, "{err}");
        }
    }
}
