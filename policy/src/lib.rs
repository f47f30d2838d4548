//! Palisade's pure policy engine.
//!
//! ```text
//!   index (pods, namespaces, nodes, policies) ──► evaluate with explanation
//!                                              └─► compile per node ──► NodeRuleSet
//! ```
//!
//! Plain data in, verdicts and compiled rules out: no I/O, no async, no Kubernetes
//! client, no iptables. The operator, the enforcer and the CLI all build on it.

pub mod address;
pub mod compile;
pub mod compiled;
pub mod engine;
pub mod error;
pub mod index;
pub mod labels;
mod lookup;
pub mod model;
pub mod podset;
pub mod scenario;

pub use error::PolicyError;
