//! Palisade's network-namespace lab (the `e2e` part of the architecture): a
//! cluster's dataplane on one machine, probed with real packets.
//!
//! ```text
//!   scenario ──► topology (netns per node, pod, external; a fabric router)
//!            ──► compile per node ──► palisade-enforcer per node netns ──► kernel
//!            ──► servers + probers in the namespaces ──► denied pairs ──► compare
//! ```
//!
//! Nothing else depends on this crate.

pub mod demo;
pub mod enforcer;
pub mod netns;
pub mod probe;
pub mod runner;
pub mod sctp;
pub mod serve;
pub mod signals;
pub mod sock;
pub mod topology;
