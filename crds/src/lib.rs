//! Palisade's API types and their conversion into the engine's model.
//!
//! ```text
//!                 Kubernetes API  or  manifest directory
//!                               │  NetworkPolicy, ClusterNetworkPolicy, AdminNetworkPolicy,
//!                               │  BaselineAdminNetworkPolicy, Tier, TieredNetworkPolicy
//!                               ▼
//!   crds:  Rust types (ours + upstream) ──► convert ──► palisade_policy::model::{Policy, Tier}
//!          CRD schemas + CEL rules ──► crdgen ──► crds/yaml/*.yaml
//! ```
//!
//! This crate owns, per the architecture: the Rust types for Palisade's CRDs
//! ([`palisade`]: `Tier`, `TieredNetworkPolicy`) and for the upstream policy APIs Palisade
//! reads ([`upstream`]: `ClusterNetworkPolicy` v1alpha2, `AdminNetworkPolicy` and
//! `BaselineAdminNetworkPolicy` v1alpha1; the standard `NetworkPolicy` comes from
//! `k8s_openapi`), their schemas and CEL validation rules, the CRD generator ([`crdgen`], the
//! `crdgen` binary) and the conversion of every kind into the engine's model ([`convert`]).
//! It evaluates nothing: what a policy means for traffic is `palisade_policy`'s business.
//! ([`scenario`] loads a scenario file whole for the CLI and the lab: the engine parses the
//! scenario, this crate converts its `policies`.)
//!
//! Fail-closed is decided here where it starts: a peer Palisade cannot enforce (upstream
//! `domainNames`, or a field only a newer upstream CRD has) becomes
//! [`Peer::Unsupported`](palisade_policy::model::Peer::Unsupported); in a manifest, an unknown
//! field is an error instead, so that a typo cannot silently widen a policy.

pub mod convert;
pub mod crdgen;
pub mod error;
pub mod palisade;
pub mod reports;
pub mod scenario;
pub mod upstream;

pub use convert::{
    admin_network_policy, baseline_admin_network_policy, cluster_network_policy, network_policy,
    parse_manifests, parse_objects, tier, tiered_network_policy, ClusterObject, Manifests,
    ObjectDocument, ObjectKey,
};
pub use error::CrdError;
pub use scenario::{load_file, scenario_files, LoadError, Loaded};
