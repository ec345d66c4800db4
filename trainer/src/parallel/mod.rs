//! How a run's work is divided among workers, and the worker itself: the one engine that trains
//! (`worker.rs`, `step.rs`). A run is stages × replicas of workers; a single process training
//! the whole model is the 1×1 case. The model's blocks split into stages (`layout.rs`, balanced
//! by the planner's cost model, embedding on the first, head and loss on the last); schedules
//! are data (GPipe, 1F1B, forward-only; `schedule.rs`); transports join neighbouring stages
//! (threads of one process, or TCP between pods; `transport/`) and the same stage of every
//! replica (data parallelism) averages its gradient over a ring (`ring.rs`). Which workers a
//! process runs (`process.rs`), on which threads (`threads.rs`), and training a job with them
//! (`launch.rs`), driving each worker through the one run loop (`run.rs`); checkpoints and
//! evaluation through the chain. See docs/pipeline.md.

pub mod checkpoint;
pub mod eval;
pub mod launch;
pub mod layout;
pub mod process;
pub mod ring;
pub mod run;
pub mod schedule;
pub mod step;
pub mod threads;
pub mod transport;
pub mod worker;

pub use layout::layouts;
pub use process::ProcessStages;
pub use run::{StepReport, Stop};
pub use schedule::{Action, ScheduleKind};
pub use threads::{Replicas, run_in_process, run_replicated, run_stages};
pub use worker::{Worker, pick_device};
