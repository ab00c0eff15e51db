//! NAT behaviour words (shared with the rest of FogConnect through [`fog_core::nat`]) and the
//! simulator's port-assignment configuration.

pub use fog_core::nat::{Behaviour, Filtering, Mapping, PortPattern};

/// How a NAT picks the external port of a new binding (RFC 4787 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortAssignment {
    /// Keep the internal port when it is free in the range; otherwise take the next free port
    /// above it, wrapping in the range (what Linux masquerade and most home routers do).
    Preserve,
    /// Each new binding takes the previous binding's port plus `delta` (non-zero), skipping ports in
    /// use. The first binding starts at a seeded random port in the range.
    Sequential {
        /// Step between consecutive bindings; often +1, sometimes +2 or negative.
        delta: i32,
    },
    /// Each new binding takes a uniformly random free port in the range (Linux `random-fully`).
    Random,
}

impl From<PortAssignment> for PortPattern {
    fn from(assignment: PortAssignment) -> Self {
        match assignment {
            PortAssignment::Preserve => PortPattern::Preserved,
            PortAssignment::Sequential { delta } => PortPattern::Sequential { delta },
            PortAssignment::Random => PortPattern::Random,
        }
    }
}
