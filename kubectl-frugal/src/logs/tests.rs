use super::*;
use frugal_api::contract::{JobRef, PodEnv, TrainerConfig};
use frugal_api::v1alpha1::Precision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// 2 replicas of a 4-stage pipeline, 2 stages a pod: 4 pods.
fn two_by_four() -> TrainingJob {
    TrainingJob::test()
        .name("lm")
        .namespace("ml")
        .custom_model(4, 32, 2, 16)
        .stages(4)
        .gpus_per_pod(2)
        .micro_batches(4)
        .batch_size(16)
        .precision(Precision::Fp32)
        .with(|s| s.parallelism.data_parallel = 2)
        .build()
}

fn pod(name: &str, index: Option<i64>) -> Pod {
    let annotations = index.map(|i| [(INDEX_ANNOTATION.to_string(), i.to_string())].into());
    Pod { metadata: ObjectMeta { name: Some(name.into()), annotations, ..Default::default() }, ..Default::default() }
}

#[test]
fn a_pod_is_placed_where_the_trainer_places_itself() {
    let tj = two_by_four();
    let job = JobRef { namespace: "ml".into(), name: "lm".into(), uid: "u".into(), generation: 1 };
    let config = TrainerConfig::render(job, &tj.spec).unwrap();
    assert_eq!(config.pods(), 4);
    for index in 0..config.pods() {
        let env = PodEnv {
            config_path: String::new(),
            pod_index: index,
            attempt: 1,
            job_name: "lm-a1".into(),
            service: "lm".into(),
            namespace: "ml".into(),
            training_job: "lm".into(),
            token_path: String::new(),
            checkpoint_dir: String::new(),
            metrics_port: 9090,
            report_status: false,
        };
        let assigned = config.assignment(&env).unwrap();
        let placed = Placement::of(index, &tj.spec.parallelism);
        let stages: Vec<i64> = assigned.stages.iter().map(|s| s.index).collect();
        assert_eq!((placed.replica, placed.stages.clone().collect::<Vec<_>>()), (assigned.replica, stages), "pod {index}");
    }
}

#[test]
fn each_line_says_its_stage_and_replica() {
    let mut tj = two_by_four();
    assert_eq!(Placement::of(3, &tj.spec.parallelism).prefix(), "[stages 2-3 replica 1] ");
    tj.spec.parallelism.gpus_per_pod = 1;
    assert_eq!(Placement::of(5, &tj.spec.parallelism), Placement { replica: 1, stages: 1..2 });
    assert_eq!(Placement::of(5, &tj.spec.parallelism).prefix(), "[stage 1 replica 1] ");
    assert_eq!(
        prefixed("[stage 0 replica 0] ", "{\"step\":1}\n{\"step\":2}\n"),
        "[stage 0 replica 0] {\"step\":1}\n[stage 0 replica 0] {\"step\":2}\n"
    );
    assert_eq!(prefixed("[stage 0 replica 0] ", ""), "");
}

#[test]
fn pods_come_in_pipeline_order() {
    let mut tj = two_by_four();
    tj.spec.parallelism.gpus_per_pod = 1;
    tj.spec.parallelism.data_parallel = 1;
    let pods = vec![pod("lm-a1-1-x", Some(1)), pod("stray", None), pod("lm-a1-0-y", Some(0)), pod("lm-a1-3-z", Some(3))];
    let placed = placed(&tj, pods);
    let expected =
        [("lm-a1-0-y", "[stage 0 replica 0] "), ("lm-a1-1-x", "[stage 1 replica 0] "), ("lm-a1-3-z", "[stage 3 replica 0] "), ("stray", "[stray] ")];
    assert_eq!(placed, expected.map(|(n, p)| (n.to_string(), p.to_string())));
}
