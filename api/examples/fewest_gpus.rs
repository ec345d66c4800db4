//! The hardware column of a comparison: for each TrainingJob manifest, the fewest GPUs whose
//! memory holds it, on a 24 GB and an 80 GB GPU, with the manifest's own settings and with fp32,
//! no activation recomputation and GPipe instead, as the planner counts them:
//! `cargo run -p frugal-api --example fewest_gpus -- a.yaml b.yaml` (bench/economics/hardware.sh).

use frugal_api::TrainingJob;
use frugal_api::planner::{PlanOptions, ResolvedModel, fewest_gpus, gpu_type};
use frugal_api::report::Table;
use frugal_api::report::human;
use frugal_api::v1alpha1::{Device, PipelineSchedule, Precision, TrainingJobSpec};

const GPUS: [&str; 2] = ["nvidia-l4-24gb", "nvidia-h100-80gb"];

fn main() {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    assert!(!paths.is_empty(), "usage: fewest_gpus JOB.yaml ...");
    let options = PlanOptions::default();
    let mut table = Table::new(&["job", "params", "active", "FLOPs/token", "settings", "24 GB: GPUs", "GiB/GPU", "80 GB: GPUs", "GiB/GPU"]);
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let job: TrainingJob = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let written = job.spec.clone();
        let mut plain = written.clone();
        plain.training.precision = Precision::Fp32;
        plain.training.activation_checkpointing = false;
        plain.parallelism.schedule = PipelineSchedule::GPipe;
        for (settings, spec) in [(describe(&written), written.clone()), (describe(&plain), plain)] {
            let model = ResolvedModel::from_spec(&spec.model).unwrap_or_else(|e| panic!("{path}: {e}"));
            let counts = model.parameters();
            let plan = frugal_api::planner::plan(&spec, &options).unwrap_or_else(|e| panic!("{path}: {e}"));
            let mut row = vec![
                job.metadata.name.clone().unwrap_or_default(),
                human(counts.total as f64),
                human(counts.active as f64),
                format!("{:.2e}", plan.flops_per_token),
                settings,
            ];
            for name in GPUS {
                let gpu = gpu_type(name).expect("a GPU of the table");
                let on = TrainingJobSpec {
                    resources: frugal_api::v1alpha1::ResourcesSpec { device: Device::Gpu, gpu_type: name.into(), ..spec.resources.clone() },
                    ..spec.clone()
                };
                match fewest_gpus(&on, gpu, &options) {
                    Some(l) => row.extend([l.gpus().to_string(), format!("{:.1}", l.memory_per_device_bytes as f64 / (1u64 << 30) as f64)]),
                    None => row.extend(["does not fit".into(), "-".into()]),
                }
            }
            table.push(row);
        }
    }
    print!("{}", table.markdown());
}

fn describe(spec: &TrainingJobSpec) -> String {
    let t = &spec.training;
    format!(
        "{:?}{}, {}",
        t.precision,
        if t.activation_checkpointing { " + recomputation" } else { "" },
        match spec.parallelism.schedule {
            PipelineSchedule::OneFOneB => "1F1B",
            PipelineSchedule::GPipe => "GPipe",
        }
    )
    .to_lowercase()
    .replace("1f1b", "1F1B")
    .replace("gpipe", "GPipe")
}
