//! Workload measurement into PCR 23 (docs/measurement.md): which inputs, how each event is
//! encoded, the order, and replay.

pub mod archive;
pub mod compose;
pub mod data;
pub mod folder;
pub mod log;
pub mod mounts;
pub mod pack;
pub mod paths;
pub mod token;

pub use archive::{archived_images, ArchiveError, ArchivedImage};
pub use compose::{Compose, ComposeError, ComposeService};
pub use data::{DataState, DataUnlock};
pub use folder::{WorkloadError, WorkloadFolder};
pub use log::{differences, replay, EventKind, LogError, WorkloadEvent, WorkloadLog, WORKLOAD_PCR};
pub use mounts::HostMount;
pub use pack::pack_folder;
pub use token::TokenCommitment;
