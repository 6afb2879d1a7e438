//! HTTP handlers of the JSON API, one module per area.

pub mod agents;
pub mod confirmations;
pub mod diffs;
pub mod events;
pub mod leases;
pub mod messages;
pub mod notes;
pub mod overlaps;
pub mod queue;
pub mod status;
pub mod tasks;

// `conclave compare`'s reports (issue 16), apart from the list others add to.
pub mod comparisons;
