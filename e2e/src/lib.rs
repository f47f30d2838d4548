//! Palisade's network-namespace lab (the `e2e` part of the architecture): a
//! cluster's dataplane on one machine, probed with real packets.
//!
//! ```text
//!   scenario ──► topology (netns per node, pod, external; a fabric router)
//!            ──► compile per node ──► palisade-enforcer per node netns ──► kernel
//!            ──► servers + probers in the namespaces ──► denied pairs ──► compare
//! ```
//!
//! With the operator ([`operator`]), the lab runs as a cluster does: the scenario
//! becomes manifests in a folder, `palisade-operator` compiles and streams each
//! node's rules, and one `palisade-enforcer agent` per node applies them.
//!
//! Nothing else depends on this crate.

pub mod demo;
pub mod enforcer;
pub mod netns;
pub mod operator;
pub mod probe;
pub mod runner;
pub mod sctp;
pub mod serve;
pub mod signals;
pub mod sock;
pub mod topology;
