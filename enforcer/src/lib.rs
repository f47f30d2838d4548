//! Palisade enforcer (being written).
