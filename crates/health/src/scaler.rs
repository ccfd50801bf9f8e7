//! The scaler that runs: KEDA's operator loop over [`crate::scale`]. One task per
//! ScaledObject polls its triggers every `pollingInterval`, takes the pure
//! [`crate::scale::step`], and hands each decision (replicas, KEDA's conditions, why) to the
//! caller, who applies it (the lab's supervisor scales its Deployments and Gateway proxies).
//!
//! - A ScaledObject that does not compile is reported once with `Ready=False` and never
//!   scales anything (fail closed: no decision from a half-read policy).
//! - **Pause** (KEDA's annotations): `autoscaling.keda.sh/paused-replicas: "N"` holds the
//!   target at N; `autoscaling.keda.sh/paused: "true"` holds it where it is. No trigger is
//!   read while paused.
//! - **Changes**: a ScaledObject whose spec and annotations are unchanged keeps its task and
//!   its state (stabilization window, failure count) across manifest changes; a changed one
//!   starts again from the replicas it last decided; a deleted one is reported as gone, with
//!   whether `restoreToOriginalReplicaCount` asks for the target's own count back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use model::Snapshot;

use crate::scale::{Decision, Policy, State};
use crate::trigger::Trigger;

/// KEDA's pause annotations.
pub const PAUSED: &str = "autoscaling.keda.sh/paused";
pub const PAUSED_REPLICAS: &str = "autoscaling.keda.sh/paused-replicas";

/// A ScaledObject of the manifests, as the scaler runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Scaled {
    /// `namespace/name` of the ScaledObject.
    pub name: String,
    pub namespace: String,
    /// `scaleTargetRef`: kind (Deployment unless written) and name, in the same namespace.
    pub target_kind: String,
    pub target: String,
    /// The compiled policy and triggers, or why not (`field: message`, each).
    pub compiled: Result<(Policy, Vec<Trigger>), Vec<String>>,
    /// `autoscaling.keda.sh/paused-replicas`: held at this count.
    paused_replicas: Option<u32>,
    /// `autoscaling.keda.sh/paused: "true"`: held where it is.
    paused: bool,
    /// The annotations' problems (a paused-replicas that is not a number).
    annotation_problem: Option<String>,
}

impl Scaled {
    /// The ScaledObjects of a snapshot.
    pub fn all(s: &Snapshot) -> Vec<Scaled> {
        s.scaled_objects
            .values()
            .map(|so| {
                let compiled = Policy::from_spec(&so.spec)
                    .map_err(|p| p.into_iter().map(|(f, m)| format!("{f}: {m}")).collect())
                    .and_then(|policy| {
                        let triggers: Result<Vec<Trigger>, Vec<String>> = so
                            .spec
                            .triggers
                            .iter()
                            .enumerate()
                            .map(|(i, t)| {
                                Trigger::from_spec(t)
                                    .map_err(|(f, m)| vec![format!("spec.triggers[{i}].{f}: {m}")])
                            })
                            .collect();
                        triggers.map(|t| (policy, t))
                    });
                let ann = &so.meta.annotations;
                let (paused_replicas, annotation_problem) = match ann.get(PAUSED_REPLICAS) {
                    None => (None, None),
                    Some(v) => match v.trim().parse::<u32>() {
                        Ok(n) if n <= crate::scale::REPLICAS_MAX => (Some(n), None),
                        _ => (
                            None,
                            Some(format!(
                                "metadata.annotations[{PAUSED_REPLICAS}]: {v:?} is not a replica \
                                 count (0 to {})",
                                crate::scale::REPLICAS_MAX
                            )),
                        ),
                    },
                };
                Scaled {
                    name: so.name().to_string(),
                    namespace: so.namespace().to_string(),
                    target_kind: so
                        .spec
                        .scale_target_ref
                        .kind
                        .clone()
                        .unwrap_or_else(|| "Deployment".into()),
                    target: so.spec.scale_target_ref.name.clone(),
                    compiled,
                    paused_replicas,
                    paused: ann.get(PAUSED).is_some_and(|v| v.trim() == "true"),
                    annotation_problem,
                }
            })
            .collect()
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether `restoreToOriginalReplicaCount` asks for the target's own count on deletion.
    pub fn restores_original(&self) -> bool {
        self.compiled
            .as_ref()
            .is_ok_and(|(p, _)| p.restore_original)
    }
}

/// What a ScaledObject's task reports: the decision to apply (none while it cannot decide),
/// and KEDA's conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub scaled: String,
    /// The replicas the target should have; `None`: leave it as it is.
    pub replicas: Option<u32>,
    /// KEDA's conditions: Ready (the ScaledObject can be acted on), Active (a trigger is
    /// above its activation), Fallback (the fallback count holds), Paused.
    pub ready: bool,
    pub active: bool,
    pub fallback: bool,
    pub paused: bool,
    pub reason: String,
}

impl Report {
    /// KEDA's conditions on the ScaledObject (its types and reasons; the message is the
    /// report's reason on Ready, the others say what holds).
    pub fn conditions(&self) -> Vec<model::Condition> {
        use model::{Condition, Status};
        let status = |b: bool| if b { Status::True } else { Status::False };
        vec![
            Condition::new(
                "Ready",
                status(self.ready),
                if self.ready {
                    "ScaledObjectReady"
                } else {
                    "ScaledObjectCheckFailed"
                },
                self.reason.clone(),
            ),
            Condition::new(
                "Active",
                status(self.active),
                if self.active {
                    "ScalerActive"
                } else {
                    "ScalerNotActive"
                },
                if self.active {
                    "Scaling is performed because triggers are active"
                } else {
                    "Scaling is not performed because triggers are not active"
                },
            ),
            Condition::new(
                "Fallback",
                status(self.fallback),
                if self.fallback {
                    "FallbackExists"
                } else {
                    "NoFallbackFound"
                },
                if self.fallback {
                    "At least one trigger is falling back on this scaled object"
                } else {
                    "No fallbacks are active on this scaled object"
                },
            ),
            Condition::new(
                "Paused",
                status(self.paused),
                if self.paused {
                    "ScaledObjectPaused"
                } else {
                    "ScaledObjectUnpaused"
                },
                if self.paused {
                    "ScaledObject is paused"
                } else {
                    "ScaledObject is not paused"
                },
            ),
        ]
    }
}

/// Decisions go to this callback, from the tasks' threads.
pub type OnReport = Arc<dyn Fn(&Scaled, &Report) + Send + Sync>;

struct Task {
    scaled: Scaled,
    handle: tokio::task::JoinHandle<()>,
    /// The replicas it decided last (a changed ScaledObject's new task starts from them).
    last: Arc<std::sync::atomic::AtomicU32>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The running tasks, by ScaledObject.
pub struct Scaler {
    client: httpkit::Client,
    on_report: OnReport,
    tasks: BTreeMap<String, Task>,
}

impl Scaler {
    pub fn new(client: httpkit::Client, on_report: OnReport) -> Scaler {
        Scaler {
            client,
            on_report,
            tasks: BTreeMap::new(),
        }
    }

    /// Runs the ScaledObjects given (a task each); `current` is a target's replica count now
    /// (where a new task starts). Returns the ScaledObjects that are gone.
    pub fn set(&mut self, scaled: Vec<Scaled>, current: impl Fn(&Scaled) -> u32) -> Vec<Scaled> {
        let keys: Vec<String> = scaled.iter().map(Scaled::key).collect();
        let (gone, kept): (BTreeMap<String, Task>, _) = std::mem::take(&mut self.tasks)
            .into_iter()
            .partition(|(k, _)| !keys.contains(k));
        self.tasks = kept;
        // Dropping a gone task stops it.
        let gone: Vec<Scaled> = gone.into_values().map(|t| t.scaled.clone()).collect();
        for s in scaled {
            let key = s.key();
            let start_from = match self.tasks.get(&key) {
                Some(t) if t.scaled == s => continue,
                Some(t) => t.last.load(std::sync::atomic::Ordering::Relaxed),
                None => current(&s),
            };
            let last = Arc::new(std::sync::atomic::AtomicU32::new(start_from));
            let handle = tokio::spawn(run(
                s.clone(),
                start_from,
                last.clone(),
                self.client.clone(),
                self.on_report.clone(),
            ));
            self.tasks.insert(
                key,
                Task {
                    scaled: s,
                    handle,
                    last,
                },
            );
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// One ScaledObject's loop.
async fn run(
    s: Scaled,
    mut current: u32,
    last: Arc<std::sync::atomic::AtomicU32>,
    client: httpkit::Client,
    on_report: OnReport,
) {
    let report = |r: Report| on_report(&s, &r);
    let not_ready = |reason: String| Report {
        scaled: s.key(),
        replicas: None,
        ready: false,
        active: false,
        fallback: false,
        paused: false,
        reason,
    };
    if let Some(p) = &s.annotation_problem {
        report(not_ready(p.clone()));
        return;
    }
    let (policy, triggers) = match &s.compiled {
        Ok(c) => c,
        Err(problems) => {
            report(not_ready(problems.join("; ")));
            return;
        }
    };
    if s.paused_replicas.is_some() || s.paused {
        let (replicas, reason) = match s.paused_replicas {
            Some(n) => (
                Some(n),
                format!("paused at {n} replicas ({PAUSED_REPLICAS})"),
            ),
            None => (None, format!("paused where it is ({PAUSED})")),
        };
        report(Report {
            scaled: s.key(),
            replicas,
            ready: true,
            active: false,
            fallback: false,
            paused: true,
            reason,
        });
        return;
    }
    let mut state = State::default();
    let mut tick = tokio::time::interval(policy.polling);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut metrics = Vec::with_capacity(triggers.len());
        for t in triggers {
            metrics.push(t.value(&client).await);
        }
        let d: Decision = crate::scale::step(policy, &mut state, Instant::now(), current, &metrics);
        current = d.replicas;
        last.store(current, std::sync::atomic::Ordering::Relaxed);
        report(Report {
            scaled: s.key(),
            replicas: Some(d.replicas),
            ready: true,
            active: d.active,
            fallback: d.fallback,
            paused: false,
            reason: d.reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    fn scaled(annotations: &str, extra: &str) -> Vec<Scaled> {
        let text = format!(
            "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\n\
             metadata: {{name: so, namespace: ns, annotations: {{{annotations}}}}}\n\
             spec:\n  scaleTargetRef: {{name: web}}\n  pollingInterval: 1\n{extra}  triggers:\n\
             \x20   - {{type: metrics-api, metadata: {{url: 'http://127.0.0.1:9/m', valueLocation: v, targetValue: '1'}}}}\n"
        );
        let raws =
            model::snapshot::RawObject::from_yaml(&text, "so.yaml", "default").expect("yaml");
        Scaled::all(&Snapshot::build(raws, Vec::new()))
    }

    /// Runs one ScaledObject's task until its first report.
    async fn first_report(s: Scaled) -> Report {
        let got = Arc::new(Mutex::new(None));
        let g = got.clone();
        let on: OnReport = Arc::new(move |_, r| {
            g.lock().expect("lock").get_or_insert_with(|| r.clone());
        });
        let mut scaler = Scaler::new(httpkit::Client::default(), on);
        scaler.set(vec![s], |_| 3);
        for _ in 0..100 {
            if let Some(r) = got.lock().expect("lock").clone() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no report in 2 s");
    }

    #[test]
    fn reads_the_target_and_keda_s_pause_annotations() {
        let s = &scaled("", "")[0];
        assert_eq!(
            (s.key().as_str(), s.target_kind.as_str(), s.target.as_str()),
            ("ns/so", "Deployment", "web")
        );
        assert!(s.compiled.is_ok(), "{:?}", s.compiled);
        assert_eq!(
            scaled("'autoscaling.keda.sh/paused-replicas': '4'", "")[0].paused_replicas,
            Some(4)
        );
        assert!(scaled("'autoscaling.keda.sh/paused': 'true'", "")[0].paused);
        let bad = &scaled("'autoscaling.keda.sh/paused-replicas': 'many'", "")[0];
        assert!(
            bad.annotation_problem
                .as_deref()
                .is_some_and(|p| p.contains("\"many\""))
        );
        let wrong = &scaled("", "  maxReplicaCount: 0\n")[0];
        assert!(wrong.compiled.is_err());
    }

    #[tokio::test]
    async fn a_paused_or_broken_scaled_object_never_reads_its_triggers() {
        let r =
            first_report(scaled("'autoscaling.keda.sh/paused-replicas': '4'", "").remove(0)).await;
        assert_eq!(
            (r.replicas, r.paused, r.ready),
            (Some(4), true, true),
            "{r:?}"
        );
        let r = first_report(scaled("'autoscaling.keda.sh/paused': 'true'", "").remove(0)).await;
        assert_eq!((r.replicas, r.paused), (None, true), "{r:?}");
        let r = first_report(scaled("", "  maxReplicaCount: 0\n").remove(0)).await;
        assert_eq!((r.replicas, r.ready), (None, false), "{r:?}");
        assert!(r.reason.contains("spec.maxReplicaCount"), "{r:?}");
        // A trigger that cannot be read: the target keeps its count (3) until the fallback.
        let r = first_report(scaled("", "").remove(0)).await;
        assert_eq!((r.replicas, r.fallback), (Some(3), false), "{r:?}");
        assert!(r.reason.contains("a trigger failed"), "{r:?}");
    }
}
