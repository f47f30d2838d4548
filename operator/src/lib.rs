//! Palisade's operator.
//!
//! ```text
//!                 Kubernetes API  or  manifest directory
//!                               │  (sources: the only code that knows which)
//!                               ▼
//!   operator:  index (pods, namespaces, nodes, policies)  ──►  compile per node  ──►  hub ──► stream server
//! ```

pub mod hub;
pub mod stream;
