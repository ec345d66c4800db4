//! Test fixtures as builders: `TrainingJob::test().stages(4).gpus_per_pod(4).build()`.
//!
//! Behind the `testing` feature, which the other crates' tests enable, so that the product
//! binaries do not carry it. A builder starts from a small valid object and each method changes
//! one thing; [`TrainingJobBuilder::with`] reaches any field the methods do not name.

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::v1alpha1::*;

impl TrainingJob {
    /// A valid job named `lm` (no namespace: the API it is applied through gives one): a custom
    /// model of 8 layers, dModel 64, 4 heads and seqLen 32 on synthetic data; every other field
    /// its default (one pipeline stage on one GPU, one micro-batch of 32 sequences).
    pub fn test() -> TrainingJobBuilder {
        TrainingJobBuilder {
            job: TrainingJob::new(
                "lm",
                TrainingJobSpec {
                    model: custom_model(8, 64, 4, 32),
                    data: DataSpec {
                        source: DataSource { type_: DataSourceType::Synthetic, synthetic: None, text: None, shards: None },
                        tokenizer: Tokenizer::default(),
                        tokenizer_file: None,
                        validation_fraction: 0.1,
                        eval_sets: Vec::new(),
                        quality_target: None,
                    },
                    training: TrainingSpec::default(),
                    parallelism: ParallelismSpec::default(),
                    resources: ResourcesSpec::default(),
                    budget: BudgetSpec::default(),
                    run_policy: RunPolicy::default(),
                    checkpoint: CheckpointSpec::default(),
                    image: None,
                    pod_template: None,
                    distill: None,
                    export: None,
                },
            ),
        }
    }
}

/// A custom model of the given shape with the schema's defaults for the rest.
fn custom_model(layers: i32, d_model: i32, heads: i32, seq_len: i32) -> ModelSpec {
    ModelSpec {
        type_: ModelType::Custom,
        preset: None,
        custom: Some(ModelShape {
            layers,
            d_model,
            heads,
            seq_len,
            vocab_size: 257,
            ffn_hidden: None,
            positions: Positions::default(),
            tied_embeddings: true,
            bias: false,
            norm: Norm::default(),
            feed_forward: FeedForward::default(),
        }),
        sparsity: SparsitySpec::default(),
        init: None,
    }
}

/// Builds a [`TrainingJob`] for a test; see [`TrainingJob::test`].
#[derive(Clone, Debug)]
#[must_use]
pub struct TrainingJobBuilder {
    job: TrainingJob,
}

impl TrainingJobBuilder {
    pub fn build(self) -> TrainingJob {
        self.job
    }

    /// The spec alone, for what takes a spec (the planner, the pod contract).
    pub fn into_spec(self) -> TrainingJobSpec {
        self.job.spec
    }

    /// Changes anything else in the spec.
    pub fn with(mut self, change: impl FnOnce(&mut TrainingJobSpec)) -> Self {
        change(&mut self.job.spec);
        self
    }

    fn meta(mut self, change: impl FnOnce(&mut ObjectMeta)) -> Self {
        change(&mut self.job.metadata);
        self
    }

    pub fn name(self, name: &str) -> Self {
        self.meta(|m| m.name = Some(name.into()))
    }

    pub fn namespace(self, namespace: &str) -> Self {
        self.meta(|m| m.namespace = Some(namespace.into()))
    }

    pub fn uid(self, uid: &str) -> Self {
        self.meta(|m| m.uid = Some(uid.into()))
    }

    pub fn generation(self, generation: i64) -> Self {
        self.meta(|m| m.generation = Some(generation))
    }

    pub fn status(mut self, status: TrainingJobStatus) -> Self {
        self.job.status = Some(status);
        self
    }

    /// A named model shape.
    pub fn preset(self, preset: ModelPreset) -> Self {
        self.with(|s| (s.model.type_, s.model.preset, s.model.custom) = (ModelType::Preset, Some(preset), None))
    }

    /// An explicit model shape (vocabSize 257, rotary positions, tied embeddings, no biases);
    /// the sparsity stays as it was.
    pub fn custom_model(self, layers: i32, d_model: i32, heads: i32, seq_len: i32) -> Self {
        self.with(|s| s.model = ModelSpec { sparsity: s.model.sparsity.clone(), ..custom_model(layers, d_model, heads, seq_len) })
    }

    /// Mixture-of-experts feed-forward layers in every block, the schema's defaults otherwise.
    pub fn moe(self, experts: i32, top_k: i32) -> Self {
        self.with(|s| {
            s.model.sparsity.moe = Some(MoeSpec {
                experts,
                top_k,
                shared_experts: 0,
                expert_hidden: None,
                every_n_layers: 1,
                capacity_factor: 1.25,
                load_balance_weight: 0.01,
                normalize_top_k: false,
            })
        })
    }

    /// The built-in generator's corpus of `tokens` tokens (branching 4).
    pub fn synthetic_tokens(self, tokens: i64) -> Self {
        self.with(|s| s.data.source.synthetic = Some(SyntheticSource { branching: 4, tokens }))
    }

    pub fn quality_target(self, metric: QualityMetric, value: f64) -> Self {
        self.with(|s| s.data.quality_target = Some(QualityTarget { metric, value }))
    }

    /// Trains for `steps` optimizer steps.
    pub fn steps(self, steps: i64) -> Self {
        self.with(|s| s.training.duration = Duration { type_: DurationType::Steps, steps: Some(steps), tokens: None })
    }

    pub fn batch_size(self, batch_size: i32) -> Self {
        self.with(|s| s.training.batch_size = batch_size)
    }

    pub fn precision(self, precision: Precision) -> Self {
        self.with(|s| s.training.precision = precision)
    }

    pub fn seed(self, seed: i64) -> Self {
        self.with(|s| s.training.seed = seed)
    }

    /// Pipeline stages of each replica.
    pub fn stages(self, stages: i32) -> Self {
        self.with(|s| s.parallelism.pipeline_stages = stages)
    }

    pub fn gpus_per_pod(self, gpus_per_pod: i32) -> Self {
        self.with(|s| s.parallelism.gpus_per_pod = gpus_per_pod)
    }

    pub fn micro_batches(self, micro_batches: i32) -> Self {
        self.with(|s| s.parallelism.micro_batches = micro_batches)
    }

    /// Trains on the pods' CPUs.
    pub fn cpu(self) -> Self {
        self.with(|s| s.resources.device = Device::Cpu)
    }

    pub fn gpu_type(self, gpu_type: &str) -> Self {
        self.with(|s| s.resources.gpu_type = gpu_type.into())
    }

    pub fn node_selector(self, key: &str, value: &str) -> Self {
        self.with(|s| _ = s.resources.node_selector.insert(key.into(), value.into()))
    }

    /// Most GPUs the job may hold at once (spec.budget.maxGpus).
    pub fn max_gpus(self, max_gpus: i32) -> Self {
        self.with(|s| s.budget.max_gpus = Some(max_gpus))
    }

    pub fn max_gpu_hours(self, max_gpu_hours: f64) -> Self {
        self.with(|s| s.budget.max_gpu_hours = Some(max_gpu_hours))
    }

    /// Counts against TrainingBudget `budget`.
    pub fn budget_ref(self, budget: &str) -> Self {
        self.with(|s| s.budget.budget_ref = Some(budget.into()))
    }

    pub fn image(self, image: &str) -> Self {
        self.with(|s| s.image = Some(image.into()))
    }

    /// An environment variable of the trainer container (podTemplate.env).
    pub fn env(self, name: &str, value: &str) -> Self {
        let var = EnvVar { name: name.into(), value: Some(value.into()), value_from: None };
        self.with(|s| s.pod_template.get_or_insert_default().env.push(var))
    }
}

impl TrainingBudget {
    /// A budget named `team` (no namespace) of `max_gpus` GPUs at once and 100 GPU-hours a
    /// day; every other field its default.
    pub fn test(max_gpus: i32) -> TrainingBudgetBuilder {
        TrainingBudgetBuilder {
            budget: TrainingBudget::new(
                "team",
                TrainingBudgetSpec {
                    max_gpus,
                    gpu_hours: Some(100.0),
                    max_cost: None,
                    period: BudgetPeriod::Day,
                    currency: "USD".into(),
                    admission: BudgetAdmission::default(),
                    prices: Vec::new(),
                    namespace_default: false,
                },
            ),
        }
    }
}

/// Builds a [`TrainingBudget`] for a test; see [`TrainingBudget::test`].
#[derive(Clone, Debug)]
#[must_use]
pub struct TrainingBudgetBuilder {
    budget: TrainingBudget,
}

impl TrainingBudgetBuilder {
    pub fn build(self) -> TrainingBudget {
        self.budget
    }

    pub fn name(mut self, name: &str) -> Self {
        self.budget.metadata.name = Some(name.into());
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.budget.metadata.namespace = Some(namespace.into());
        self
    }

    /// GPU-hours a period; `None` for no limit.
    pub fn gpu_hours(mut self, gpu_hours: Option<f64>) -> Self {
        self.budget.spec.gpu_hours = gpu_hours;
        self
    }

    pub fn admission(mut self, admission: BudgetAdmission) -> Self {
        self.budget.spec.admission = admission;
        self
    }

    /// The namespace's default budget (spec.namespaceDefault).
    pub fn namespace_default(mut self, namespace_default: bool) -> Self {
        self.budget.spec.namespace_default = namespace_default;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builders' objects are what the same YAML gives: their defaults are the schema's.
    /// What an object is, for comparing (the kinds derive no `PartialEq`).
    fn same(object: impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(object).unwrap()
    }

    #[test]
    fn the_builders_give_what_the_same_yaml_gives() {
        let yaml = |spec: &str| -> TrainingJob {
            serde_saphyr::from_str(&format!("apiVersion: frugal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: lm}}\nspec:\n{spec}")).unwrap()
        };
        let small = "  model: {type: Custom, custom: {layers: 8, dModel: 64, heads: 4, seqLen: 32}}\n  data: {source: {type: Synthetic}}\n";
        assert_eq!(same(TrainingJob::test().build()), same(yaml(small)));
        let moe = "  model: {type: Custom, custom: {layers: 8, dModel: 64, heads: 4, seqLen: 32}, sparsity: {moe: {experts: 4, topK: 2}}}\n  data: {source: {type: Synthetic}}\n";
        assert_eq!(same(TrainingJob::test().moe(4, 2).build()), same(yaml(moe)));
        let tiny = "  model: {type: Preset, preset: tiny}\n  data: {source: {type: Synthetic, synthetic: {tokens: 20000}}}\n  parallelism: {microBatches: 8}\n  training: {batchSize: 16, duration: {type: Steps, steps: 7}}\n";
        assert_eq!(
            same(TrainingJob::test().preset(ModelPreset::Tiny).synthetic_tokens(20_000).micro_batches(8).batch_size(16).steps(7).build()),
            same(yaml(tiny))
        );
        let budget: TrainingBudget = serde_saphyr::from_str(
            "apiVersion: frugal.dev/v1alpha1\nkind: TrainingBudget\nmetadata: {name: team}\nspec: {maxGpus: 4, gpuHours: 100, period: Day}\n",
        )
        .unwrap();
        assert_eq!(same(TrainingBudget::test(4).build()), same(budget));
    }
}
