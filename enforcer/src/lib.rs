//! Palisade's node agent.
//!
//! ```text
//!   enforcer:  stream client ──► render (pure)
//!                                   │
//!                                 apply: iptables-restore, ipset, conntrack (one module)
//!                                   │
//!                                 kernel
//! ```
//!
//! [`render`](mod@render) turns a node's compiled rule set ([`NodeRuleSet`]) into ipset and
//! `iptables-restore --noflush` text for our own chains only; [`apply`] is the only
//! module that runs iptables, ipset and conntrack, writing the difference from what
//! it installed last; [`eval`](mod@eval) decides a connection exactly as the rendered rules
//! do (used to revoke established connections a new state denies, and to cross-check
//! the kernel in tests). [`stream`] is the client of the operator's stream
//! (`palisade-enforcer agent`); `run` follows a file instead. [`audit`] reads the
//! decisions the rules log (NFLOG) and spools them for the operator's audit log.

// Render and apply build and drop tens of thousands of small strings per rule set;
// mimalloc halves what glibc's allocator spent on them (`--bench program`). Declared
// here so the binary, its tests and its benches all run on it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod apply;
pub mod audit;
mod check;
pub mod error;
pub mod eval;
pub mod names;
pub mod render;
pub mod stream;

pub use apply::{
    cleanup, detect_backend, ApplyOptions, ApplyReport, Backend, CleanupReport, Enforcer,
};
pub use error::{ApplyError, RenderError, RuleIssue};
pub use eval::{eval, Decision, Evaluator, Flow, SideDecision, Verdict, L4};
pub use palisade_policy::compiled::NodeRuleSet;
pub use render::{parse_comment, render, AuditRules, CommentId, RenderOptions, Rendered, RuleRef};
