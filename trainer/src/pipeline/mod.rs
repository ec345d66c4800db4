//! Pipeline parallelism: the model's blocks split into stages (balanced by the planner's cost
//! model, embedding on the first, head and loss on the last), schedules as data (GPipe, 1F1B,
//! forward-only), an engine that executes them, and transports between stages (threads of one
//! process, or TCP between pods), and evaluation through the same chain. The pipeline may be
//! replicated (data parallelism): the same stage of every replica averages its gradient over a
//! ring. See docs/pipeline.md.

pub mod checkpoint;
pub mod engine;
pub mod eval;
pub mod process;
pub mod ring;
pub mod run;
pub mod schedule;
pub mod stage;
pub mod transport;

pub use engine::{Replicas, StageWorker, run_in_process, run_replicated, run_stages};
pub use process::ProcessStages;
pub use schedule::{Action, ScheduleKind};
pub use stage::layouts;
