//! Prints the plan of a TrainingJob manifest: `cargo run -p frugal-api --example plan -- job.yaml`.

use frugal_api::TrainingJob;
use frugal_api::planner::{PlanOptions, plan};

fn main() {
    let path = std::env::args().nth(1).expect("usage: plan JOB.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let job: TrainingJob = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    match plan(&job.spec, &PlanOptions::default()) {
        Ok(plan) => print!("{}", serde_saphyr::to_string(&plan.to_status()).unwrap()),
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    }
}
