//! The bill: what a job's pods held, as the operator reads it from the pods themselves, never
//! from what the trainer says. A pod is billed its GPUs (its containers' limits) from when it
//! was scheduled until it terminated; a pod still holding its GPUs is billed up to the pass
//! that looked at it. Each pod's bill is kept in `status.cost.pods`, so the totals are sums of
//! durable records: a restarted operator reads them back and recomputes each pod from its own
//! timestamps, which neither loses a second nor counts one twice ([`bill`] only ever moves a
//! record's end forward).
//!
//! A pod that is gone before a pass saw it terminate (its Job deleted it when the attempt was
//! stopped, say) is billed up to when its attempt's Job recorded that it ended, or up to when a
//! pass last saw it if its Job is gone too: at most one billing interval
//! ([`BILLING_INTERVAL`]) of its GPUs is not counted then.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use frugal_api::v1alpha1::{CostStatus, PodCost, PricedFrom};

/// How often a pass bills a job whose pods hold GPUs.
pub const BILLING_INTERVAL: Duration = Duration::from_secs(15);

/// The label NVIDIA's GPU feature discovery puts on a node: its GPUs' product name.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// Most pod records a status keeps; older ended ones are folded into one.
const MAX_RECORDS: usize = 128;

/// The name of the record that holds folded older pods.
const EARLIER: &str = "(earlier pods)";

/// One pod as a pass sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSeen {
    pub name: String,
    pub attempt: i32,
    pub gpus: i32,
    /// The node it was scheduled to.
    pub node: Option<String>,
    /// When it was scheduled (PodScheduled became True).
    pub scheduled: Option<Time>,
    /// When it terminated, once it has (its containers' latest finish).
    pub terminated: Option<Time>,
}

/// One attempt as billing sees it: its pods in the cache, and when its Job says it ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttemptSeen {
    pub attempt: i32,
    pub pods: Vec<PodSeen>,
    /// When its Job completed or failed (the Job controller records it once its pods are gone).
    pub job_ended: Option<Time>,
}

/// What one GPU-hour of a pod costs, and the GPU type that was priced.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub gpu_type: String,
    pub priced_from: PricedFrom,
    pub per_gpu_hour: f64,
}

fn secs(t: &Time) -> f64 {
    t.0.as_second() as f64 + f64::from(t.0.subsec_nanosecond()) / 1e9
}

fn later(a: &Time, b: &Time) -> Time {
    if b.0 > a.0 { b.clone() } else { a.clone() }
}

/// GPUs a pod holds.
fn gpus(pod: &Pod, resource: &str) -> i32 {
    spec_gpus(pod.spec.as_ref(), resource)
}

/// GPUs a pod of `spec` asks for: its containers' requests of `resource`, else their limits (an
/// extended resource's request, where set, equals its limit).
pub fn spec_gpus(spec: Option<&k8s_openapi::api::core::v1::PodSpec>, resource: &str) -> i32 {
    let containers = spec.into_iter().flat_map(|s| &s.containers);
    containers
        .filter_map(|c| {
            let r = c.resources.as_ref()?;
            r.requests.as_ref().and_then(|q| q.get(resource)).or_else(|| r.limits.as_ref()?.get(resource))
        })
        .filter_map(|q| q.0.parse::<i32>().ok())
        .sum()
}

/// What a pass sees of `pod`, attempt `attempt`'s.
pub fn seen(pod: &Pod, attempt: i32, resource: &str) -> PodSeen {
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let scheduled =
        conditions.and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled" && c.status == "True")).and_then(|c| c.last_transition_time.clone());
    let terminal = matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
    // its containers' latest finish; a terminal pod whose containers never ran ends at its last
    // condition change, or, with none, when it was created
    let finished =
        || status?.container_statuses.iter().flatten().filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.clone()).max_by_key(|t| t.0);
    let changed = || conditions.into_iter().flatten().filter_map(|c| c.last_transition_time.clone()).max_by_key(|t| t.0);
    let terminated = terminal.then(|| finished().or_else(changed).unwrap_or_else(|| created(pod)));
    PodSeen {
        name: pod.name_any(),
        attempt,
        gpus: gpus(pod, resource),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        scheduled,
        terminated,
    }
}

fn created(pod: &Pod) -> Time {
    pod.metadata.creation_timestamp.clone().unwrap_or_else(|| Time(Timestamp::now()))
}

/// Fills in a record's GPU-hours and cost from its interval.
fn priced(mut r: PodCost) -> PodCost {
    let hours = (secs(&r.until) - secs(&r.from)).max(0.0) / 3600.0;
    r.gpu_hours = f64::from(r.gpus) * hours;
    r.cost = r.gpu_hours * r.price_per_gpu_hour;
    r
}

/// The job's bill after this pass: `prev`'s records, each pod seen now billed up to now or its
/// end, the pods that are gone closed, and the totals summed. `price` prices a pod the first
/// time it is billed; `target` is when the quality target was reached, for gpuHoursToTarget.
pub fn bill(
    prev: Option<&CostStatus>,
    attempts: &[AttemptSeen],
    price: impl Fn(&PodSeen) -> Price,
    currency: &str,
    target: Option<&Time>,
    now: &Time,
) -> CostStatus {
    // to the whole second, as the status keeps it: a record billed up to a fraction of a second
    // would bill more than it says, and less once read back
    let now = &Time(Timestamp::from_second(now.0.as_second()).unwrap_or(now.0));
    let mut records: Vec<PodCost> = prev.map(|c| c.pods.clone()).unwrap_or_default();
    for pod in attempts.iter().flat_map(|a| &a.pods) {
        // a pod not yet scheduled holds no GPU; one without GPUs costs nothing
        let (Some(from), true) = (pod.scheduled.clone(), pod.gpus > 0) else { continue };
        let until = pod.terminated.clone().unwrap_or_else(|| now.clone());
        match records.iter_mut().find(|r| r.name == pod.name && r.attempt == pod.attempt) {
            Some(r) if r.ended => {}
            Some(r) => {
                r.until = later(&r.until, &until);
                r.ended = pod.terminated.is_some();
                *r = priced(r.clone());
            }
            None => {
                let p = price(pod);
                records.push(priced(PodCost {
                    name: pod.name.clone(),
                    attempt: pod.attempt,
                    gpus: pod.gpus,
                    gpu_type: p.gpu_type,
                    priced_from: p.priced_from,
                    price_per_gpu_hour: p.per_gpu_hour,
                    from,
                    until,
                    ended: pod.terminated.is_some(),
                    gpu_hours: 0.0,
                    cost: 0.0,
                }))
            }
        }
    }
    // the pods that are gone: up to their Job's end, if it recorded one
    for r in records.iter_mut().filter(|r| !r.ended) {
        let attempt = attempts.iter().find(|a| a.attempt == r.attempt);
        if attempt.is_some_and(|a| a.pods.iter().any(|p| p.name == r.name)) {
            continue;
        }
        if let Some(end) = attempt.and_then(|a| a.job_ended.as_ref()) {
            r.until = later(&r.until, end);
        }
        r.ended = true;
        *r = priced(r.clone());
    }
    let records = folded(records);
    let gpu_hours_to_target = prev.and_then(|c| c.gpu_hours_to_target).or_else(|| target.map(|t| hours_until(&records, t)));
    CostStatus {
        gpu_hours: records.iter().map(|r| r.gpu_hours).sum(),
        cost: records.iter().map(|r| r.cost).sum(),
        currency: currency.into(),
        gpu_hours_to_target,
        pods: records,
    }
}

/// GPU-hours the records had held at `t`.
fn hours_until(records: &[PodCost], t: &Time) -> f64 {
    records
        .iter()
        .map(|r| {
            let span = secs(&r.until) - secs(&r.from);
            let before = (secs(t).min(secs(&r.until)) - secs(&r.from)).max(0.0);
            if span > 0.0 { r.gpu_hours * before / span } else { 0.0 }
        })
        .sum()
}

/// Keeps the records within [`MAX_RECORDS`]: the oldest ended ones become one record per GPU
/// type that carries their GPU-hours and cost (the billed metrics count by GPU type, so a fold
/// must not move spend from one type to another).
fn folded(mut records: Vec<PodCost>) -> Vec<PodCost> {
    if records.len() <= MAX_RECORDS {
        return records;
    }
    let excess = records.len() - MAX_RECORDS + 1;
    let (old, keep): (Vec<_>, Vec<_>) = {
        let mut n = 0;
        records.drain(..).partition(|r| {
            let fold = (r.ended || r.name == EARLIER) && n < excess;
            n += usize::from(fold);
            fold
        })
    };
    let mut by_type: std::collections::BTreeMap<String, Vec<PodCost>> = Default::default();
    for r in old {
        by_type.entry(r.gpu_type.clone()).or_default().push(r);
    }
    let earlier = by_type.into_iter().filter_map(|(gpu_type, old)| {
        let from = old.iter().map(|r| r.from.clone()).min_by_key(|t| t.0)?;
        let until = old.iter().map(|r| r.until.clone()).max_by_key(|t| t.0)?;
        Some(PodCost {
            name: EARLIER.into(),
            attempt: 0,
            gpus: 0,
            gpu_type,
            priced_from: PricedFrom::JobSpec,
            price_per_gpu_hour: 0.0,
            from,
            until,
            ended: true,
            gpu_hours: old.iter().map(|r| r.gpu_hours).sum(),
            cost: old.iter().map(|r| r.cost).sum(),
        })
    });
    earlier.collect::<Vec<_>>().into_iter().chain(keep).collect()
}

/// Whether any pod of the bill still holds GPUs (the job is billed again soon).
pub fn open(cost: &CostStatus) -> bool {
    cost.pods.iter().any(|r| !r.ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + s).unwrap())
    }

    fn pod(name: &str, attempt: i32, gpus: i32, scheduled: Option<i64>, terminated: Option<i64>) -> PodSeen {
        PodSeen { name: name.into(), attempt, gpus, node: Some("n".into()), scheduled: scheduled.map(t), terminated: terminated.map(t) }
    }

    fn h100(_: &PodSeen) -> Price {
        Price { gpu_type: "nvidia-h100-80gb".into(), priced_from: PricedFrom::JobSpec, per_gpu_hour: 2.0 }
    }

    fn attempt(attempt: i32, pods: Vec<PodSeen>, job_ended: Option<i64>) -> AttemptSeen {
        AttemptSeen { attempt, pods, job_ended: job_ended.map(t) }
    }

    #[test]
    fn pods_are_billed_from_scheduled_to_terminated_and_running_ones_up_to_now() {
        // 2 GPUs from 0 to 1800 s (ended), 4 GPUs from 0, running at 3600 s
        let a = attempt(1, vec![pod("a1-0", 1, 2, Some(0), Some(1800)), pod("a1-1", 1, 4, Some(0), None), pod("a1-2", 1, 4, None, None)], None);
        let c = bill(None, &[a], h100, "USD", None, &t(3600));
        assert_eq!(c.pods.len(), 2, "a pod not yet scheduled holds nothing");
        assert!((c.gpu_hours - 5.0).abs() < 1e-9, "{c:?}");
        assert!((c.cost - 10.0).abs() < 1e-9);
        assert!(open(&c));
    }

    #[test]
    fn a_running_pod_is_billed_to_the_whole_second_so_its_bill_never_goes_back() {
        let a = attempt(1, vec![pod("a1-0", 1, 2, Some(0), None)], None);
        let half = Time(Timestamp::from_second(1_800_000_000 + 8).unwrap().checked_add(k8s_openapi::jiff::SignedDuration::from_millis(600)).unwrap());
        let running = bill(None, std::slice::from_ref(&a), h100, "USD", None, &half);
        assert!((running.gpu_hours * 3600.0 - 16.0).abs() < 1e-9, "what the record says, 2 GPUs for 8 s: {running:?}");
        // read back as the API server keeps it, and the pod then ends at 8 s: the same figure
        let read_back: CostStatus = serde_json::from_value(serde_json::to_value(&running).unwrap()).unwrap();
        let ended = bill(Some(&read_back), &[attempt(1, vec![pod("a1-0", 1, 2, Some(0), Some(8))], None)], h100, "USD", None, &t(9));
        assert!(ended.gpu_hours >= running.gpu_hours, "{} < {}", ended.gpu_hours, running.gpu_hours);
    }

    #[test]
    fn billing_again_from_the_same_pods_counts_nothing_twice() {
        let a = attempt(1, vec![pod("a1-0", 1, 1, Some(0), None)], None);
        let first = bill(None, std::slice::from_ref(&a), h100, "USD", None, &t(3600));
        // a restarted operator bills from the record and the same pod: the same figure, moved on
        let again = bill(Some(&first), std::slice::from_ref(&a), h100, "USD", None, &t(3600));
        assert_eq!(again, first);
        let later_on = bill(Some(&first), &[a], h100, "USD", None, &t(7200));
        assert!((later_on.gpu_hours - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_pod_gone_unseen_is_billed_to_its_jobs_end_or_to_when_it_was_last_seen() {
        let running = attempt(1, vec![pod("a1-0", 1, 1, Some(0), None)], None);
        let seen_at_hour = bill(None, &[running], h100, "USD", None, &t(3600));
        // its Job recorded the end at 5400 s; the pod itself is gone
        let stopped = bill(Some(&seen_at_hour), &[attempt(1, vec![], Some(5400))], h100, "USD", None, &t(9000));
        assert!((stopped.gpu_hours - 1.5).abs() < 1e-9, "{stopped:?}");
        assert!(!open(&stopped));
        // its Job gone too: billed as last seen
        let gone = bill(Some(&seen_at_hour), &[], h100, "USD", None, &t(9000));
        assert!((gone.gpu_hours - 1.0).abs() < 1e-9);
        // an ended record is final, whatever comes later
        let after = bill(Some(&stopped), &[attempt(1, vec![pod("a1-0", 1, 1, Some(0), None)], None)], h100, "USD", None, &t(99_000));
        assert_eq!(after.gpu_hours, stopped.gpu_hours);
    }

    #[test]
    fn attempts_add_up_and_the_target_is_priced_at_its_moment() {
        let one = attempt(1, vec![pod("a1-0", 1, 2, Some(0), Some(3600))], Some(3600));
        let two = attempt(2, vec![pod("a2-0", 1, 2, Some(4000), None)], None);
        let two = AttemptSeen { pods: vec![PodSeen { attempt: 2, ..two.pods[0].clone() }], ..two };
        let c = bill(None, &[one, two], h100, "EUR", Some(&t(5800)), &t(7600));
        assert!((c.gpu_hours - 4.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.currency, "EUR");
        // 2 GPU-hours from the first attempt, 1 from the second by 5800 s
        assert!((c.gpu_hours_to_target.unwrap() - 3.0).abs() < 1e-9, "{c:?}");
        // once recorded it stays
        let next = bill(Some(&c), &[], h100, "EUR", Some(&t(7000)), &t(8000));
        assert_eq!(next.gpu_hours_to_target, c.gpu_hours_to_target);
    }

    #[test]
    fn many_attempts_fold_into_one_record_that_keeps_their_spend() {
        let attempts: Vec<_> = (1..=200)
            .map(|i| attempt(i, vec![pod(&format!("a{i}-0"), i, 1, Some(i64::from(i) * 100), Some(i64::from(i) * 100 + 36))], Some(0)))
            .collect();
        let c = bill(None, &attempts, h100, "USD", None, &t(100_000));
        assert!(c.pods.len() <= MAX_RECORDS, "{}", c.pods.len());
        assert_eq!(c.pods[0].name, EARLIER);
        assert!((c.gpu_hours - 2.0).abs() < 1e-9, "{}", c.gpu_hours);
        assert!((c.cost - 4.0).abs() < 1e-9);
        assert_eq!(c.pods[0].gpu_type, "nvidia-h100-80gb", "the folded record keeps its GPU type");
    }

    #[test]
    fn a_fold_keeps_each_gpu_types_spend_apart() {
        let attempts: Vec<_> = (1..=200)
            .map(|i| attempt(i, vec![pod(&format!("a{i}-0"), i, 1, Some(i64::from(i) * 100), Some(i64::from(i) * 100 + 36))], Some(0)))
            .collect();
        // odd attempts ran on H100s, even ones on L4s
        let by_attempt = |p: &PodSeen| Price {
            gpu_type: if p.attempt % 2 == 1 { "nvidia-h100-80gb" } else { "nvidia-l4-24gb" }.into(),
            priced_from: PricedFrom::NodeLabel,
            per_gpu_hour: 1.0,
        };
        let c = bill(None, &attempts, by_attempt, "USD", None, &t(100_000));
        let hours = |ty: &str| c.pods.iter().filter(|r| r.gpu_type == ty).map(|r| r.gpu_hours).sum::<f64>();
        assert!((hours("nvidia-h100-80gb") - 1.0).abs() < 1e-9, "{c:?}");
        assert!((hours("nvidia-l4-24gb") - 1.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.pods.iter().filter(|r| r.name == EARLIER).count(), 2);
    }

    #[test]
    fn a_pods_gpus_and_times_are_read_from_the_pod() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "lm-a1-0"},
            "spec": {"nodeName": "gpu-1", "containers": [{"name": "trainer", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]},
            "status": {"phase": "Succeeded",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2027-01-15T08:00:00Z"}],
                "containerStatuses": [{"name": "trainer", "image": "t", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "finishedAt": "2027-01-15T08:30:00Z"}}}]}
        }))
        .unwrap();
        let s = seen(&p, 1, "nvidia.com/gpu");
        assert_eq!((s.gpus, s.node.as_deref()), (2, Some("gpu-1")));
        assert_eq!(secs(s.terminated.as_ref().unwrap()) - secs(s.scheduled.as_ref().unwrap()), 1800.0);
    }
}
