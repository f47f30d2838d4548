//! Who may read the audit log through the query API: a Kubernetes identity that RBAC
//! allows to `get` the resource `decisions` of the API group `audit.palisade.io` (no such
//! API is served: the pair only names the permission in Roles), in every namespace the
//! query asks about, or cluster-wide (a ClusterRole) for a query that names no namespace.
//!
//! The bearer token is checked with a TokenReview; the permission with one
//! SubjectAccessReview per namespace asked about, for the user, groups, uid and extra the
//! review returned.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::stream::auth::{token_review, ReviewFailure};

/// The API group of the permission.
pub const GROUP: &str = "audit.palisade.io";
/// The resource of the permission.
pub const RESOURCE: &str = "decisions";
/// The verb of the permission.
pub const VERB: &str = "get";

/// Why a caller is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    /// No token, or one the API server does not accept: HTTP 401.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// Authenticated, but RBAC does not allow it: HTTP 403.
    #[error("{user} may not get {RESOURCE}.{GROUP} {scope}{why}")]
    Forbidden {
        user: String,
        scope: String,
        why: String,
    },
    /// The API server could not be asked: HTTP 503.
    #[error("cannot check access now: {0}")]
    Unavailable(String),
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// Checks callers against the API server.
#[derive(Clone)]
pub struct Access {
    client: Client,
}

impl Access {
    pub fn new(client: Client) -> Self {
        Access { client }
    }

    /// TokenReview, then a SubjectAccessReview per namespace (`None`: cluster-wide).
    pub async fn check(
        &self,
        token: &str,
        namespaces: &[Option<String>],
    ) -> Result<Caller, AccessError> {
        let caller = self.authenticate(token).await?;
        for ns in namespaces {
            self.authorize(&caller, ns.as_deref()).await?;
        }
        Ok(caller)
    }

    async fn authenticate(&self, token: &str) -> Result<Caller, AccessError> {
        // The API server's default audience: the caller's own token (kubectl, a
        // ServiceAccount) is valid for it.
        let info = token_review(&self.client, token, &[])
            .await
            .map_err(|e| match e {
                ReviewFailure::Unavailable(why) => AccessError::Unavailable(why),
                ReviewFailure::Unauthenticated(why) => AccessError::Unauthenticated(why),
            })?;
        let user = info.username.unwrap_or_default();
        if user.is_empty() {
            return Err(AccessError::Unauthenticated(
                "the token names no user".into(),
            ));
        }
        Ok(Caller {
            user,
            uid: info.uid,
            groups: info.groups.unwrap_or_default(),
            extra: info.extra.unwrap_or_default(),
        })
    }

    async fn authorize(&self, caller: &Caller, namespace: Option<&str>) -> Result<(), AccessError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                uid: caller.uid.clone(),
                groups: (!caller.groups.is_empty()).then(|| caller.groups.clone()),
                extra: (!caller.extra.is_empty()).then(|| caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some(RESOURCE.into()),
                    verb: Some(VERB.into()),
                    namespace: namespace.map(str::to_string),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AccessError::Unavailable(format!("SubjectAccessReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.allowed && status.denied != Some(true) {
            return Ok(());
        }
        let why = [status.reason, status.evaluation_error]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(AccessError::Forbidden {
            user: caller.user.clone(),
            scope: match namespace {
                Some(ns) => format!("in namespace {ns}"),
                None => "in all namespaces".into(),
            },
            why: if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            },
        })
    }
}
