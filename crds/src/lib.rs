//! Rust types for Palisade CRDs and upstream policy APIs (being written).
