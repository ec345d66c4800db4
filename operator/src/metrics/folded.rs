//! The bills of deleted TrainingJobs, kept in a ConfigMap in the operator's namespace so that the
//! billed counters survive a restart: a job's finalizer adds its final bill here before the job
//! goes, and the exported totals are this record plus the bills of the jobs that still exist.
//!
//! A job is folded once: the record keeps the uids it folded for an hour (a finalizer whose
//! removal failed after folding is retried within seconds, finds its uid and adds nothing
//! again), so the list stays as short as an hour's deletions. The totals have one entry a label set, as
//! bounded as the series themselves. A record that does not parse is reported and left as it is,
//! never overwritten: the counters then read lower after a restart, which Prometheus takes as a
//! reset, and nothing a person could repair is lost.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

pub use super::spend::Folded;
use super::spend::{Amount, BilledLabels};

/// The ConfigMap key that holds the record, as JSON.
pub const KEY: &str = "billed.json";

/// Where the record is: `--billed-record NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for Location {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: namespace.into(), name: name.into() })
            }
            _ => Err(format!("--billed-record {s:?}: expected NAMESPACE/NAME of a ConfigMap, for example frugal-system/frugal-billed")),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Record {
    totals: Vec<Entry>,
    /// uid → when it was folded, in seconds since the epoch.
    folded: BTreeMap<String, i64>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Entry {
    namespace: String,
    budget: String,
    gpu_type: String,
    currency: String,
    gpu_seconds: f64,
    cost: f64,
}

/// The record's JSON, and back.
impl Folded {
    fn to_json(&self) -> String {
        let record = Record {
            totals: self
                .totals
                .iter()
                .map(|(l, a)| Entry {
                    namespace: l.namespace.clone(),
                    budget: l.budget.clone(),
                    gpu_type: l.gpu_type.clone(),
                    currency: l.currency.clone(),
                    gpu_seconds: a.gpu_seconds,
                    cost: a.cost,
                })
                .collect(),
            folded: self.uids.clone(),
        };
        serde_json::to_string_pretty(&record).expect("the record serializes")
    }

    fn from_json(json: &str) -> Result<Self, String> {
        let record: Record = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut folded = Folded { uids: record.folded, ..Default::default() };
        for e in record.totals {
            if !(e.gpu_seconds.is_finite() && e.cost.is_finite() && e.gpu_seconds >= 0.0 && e.cost >= 0.0) {
                return Err(format!("the entry for namespace {:?}, budget {:?} has a negative or non-finite amount", e.namespace, e.budget));
            }
            let labels = BilledLabels { namespace: e.namespace, budget: e.budget, gpu_type: e.gpu_type, currency: e.currency };
            folded.fold_into(labels, Amount { gpu_seconds: e.gpu_seconds, cost: e.cost });
        }
        Ok(folded)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("ConfigMap {location} key {KEY} does not parse ({reason}); fix or delete it (the billed counters then restart from the jobs that exist)")]
    Unreadable { location: Location, reason: String },
}

fn parse(location: &Location, cm: &ConfigMap) -> Result<Folded, Error> {
    match cm.data.as_ref().and_then(|d| d.get(KEY)) {
        None => Ok(Folded::default()),
        Some(json) => Folded::from_json(json).map_err(|reason| Error::Unreadable { location: location.clone(), reason }),
    }
}

/// The record as the API server has it (empty where there is none yet).
pub async fn load(client: &Client, location: &Location) -> Result<Folded, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &location.namespace);
    match api.get_opt(&location.name).await? {
        Some(cm) => parse(location, &cm),
        None => Ok(Folded::default()),
    }
}

/// Adds job `uid`'s bills to the record, once, forgetting uids folded over an hour ago; the
/// record as written. A conflicting write (another process wrote between the read and this
/// write) is read again and retried.
pub async fn fold(client: &Client, location: &Location, uid: &str, bills: &[(BilledLabels, Amount)]) -> Result<Folded, Error> {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &location.namespace);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = api.get_opt(&location.name).await?;
        let mut folded = match &current {
            Some(cm) => parse(location, cm)?,
            None => Folded::default(),
        };
        let added = folded.fold(uid, bills, now);
        let before = folded.uids.len();
        folded.prune(now);
        if !added && folded.uids.len() == before {
            return Ok(folded);
        }
        let data = Some([(KEY.to_string(), folded.to_json())].into());
        let written = match current {
            Some(mut cm) => {
                // the resourceVersion read makes the write fail if another came between
                cm.data = data;
                api.replace(&location.name, &PostParams::default(), &cm).await
            }
            None => {
                let labels = Some([("app.kubernetes.io/managed-by".to_string(), "frugal-operator".to_string())].into());
                let cm = ConfigMap {
                    metadata: ObjectMeta { name: Some(location.name.clone()), labels, ..Default::default() },
                    data,
                    ..Default::default()
                };
                api.create(&PostParams::default(), &cm).await
            }
        };
        match written {
            Ok(_) => return Ok(folded),
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(budget: &str) -> BilledLabels {
        BilledLabels { namespace: "ml".into(), budget: budget.into(), gpu_type: "nvidia-h100-80gb".into(), currency: "USD".into() }
    }

    #[test]
    fn a_job_is_folded_once_and_its_uid_kept_for_an_hour() {
        let mut f = Folded::default();
        let bill = [(labels("team"), Amount { gpu_seconds: 3600.0, cost: 2.5 })];
        assert!(f.fold("u-1", &bill, 1000));
        assert!(!f.fold("u-1", &bill, 1010), "a second pass of the same finalizer adds nothing");
        assert!(f.fold("u-2", &bill, 2000));
        assert_eq!(f.totals[&labels("team")], Amount { gpu_seconds: 7200.0, cost: 5.0 });
        f.prune(1000 + super::super::spend::KEEP_UIDS_SECONDS);
        assert_eq!(f.uids.keys().collect::<Vec<_>>(), ["u-2"], "an hour after it was folded, a uid is forgotten");
        assert_eq!(f.totals[&labels("team")].gpu_seconds, 7200.0, "pruning uids keeps the totals");
    }

    #[test]
    fn the_record_round_trips_and_a_bad_one_is_refused_with_its_reason() {
        let mut f = Folded::default();
        f.fold("u-1", &[(labels("team"), Amount { gpu_seconds: 10.0, cost: 0.5 }), (labels(""), Amount { gpu_seconds: 4.0, cost: 0.0 })], 1000);
        assert_eq!(Folded::from_json(&f.to_json()).unwrap(), f);
        let bad = f.to_json().replace("10.0", "-10.0");
        assert!(Folded::from_json(&bad).unwrap_err().contains("negative"), "{bad}");
        assert!(Folded::from_json("{\"totals\": 3}").is_err());
        let location: Location = "frugal-system/frugal-billed".parse().unwrap();
        let cm = ConfigMap { data: Some([(KEY.to_string(), "not json".to_string())].into()), ..Default::default() };
        let e = parse(&location, &cm).unwrap_err().to_string();
        assert!(e.contains("frugal-system/frugal-billed") && e.contains("billed.json") && e.contains("fix or delete"), "{e}");
        assert!("frugal-billed".parse::<Location>().unwrap_err().contains("NAMESPACE/NAME"));
    }
}
