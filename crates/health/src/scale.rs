//! KEDA ScaledObject semantics over the Kubernetes HPA algorithm, pure: what replica count a
//! target should have, given its metrics, the time and what happened before. No I/O: the
//! caller queries the triggers (Prometheus, metrics-api) every `pollingInterval` and applies
//! the decision.
//!
//! - **Activation** (KEDA): a trigger is active when its value is above
//!   `activationThreshold` (0 unless set). With no trigger active for `cooldownPeriod`, a
//!   target whose `minReplicaCount` is 0 goes to `idleReplicaCount` (0 unless set); an active
//!   trigger brings a target at 0 to `max(minReplicaCount, 1)` at once.
//! - **Desired replicas** (HPA, per trigger, the largest wins): `AverageValue` (the default):
//!   `ceil(value / threshold)`; `Value`: `ceil(current × value / threshold)`; no change while
//!   the usage ratio is within the HPA's tolerance (0.1) of 1. Clamped to
//!   `[max(minReplicaCount, 1), maxReplicaCount]`.
//! - **Stabilization** (HPA `behavior`): a scale-down takes the highest recommendation of the
//!   last `scaleDown.stabilizationWindowSeconds` (300 s unless set), a scale-up the lowest of
//!   the last `scaleUp.stabilizationWindowSeconds` (0 unless set).
//! - **Fallback** (KEDA): after `failureThreshold` consecutive polls with a failing trigger,
//!   the target gets `fallback.replicas` until a poll succeeds again.
//!
//! - **Rate** (HPA `behavior.scaleUp/scaleDown.policies` and `selectPolicy`): a change is
//!   limited to what the policies allow over their periods, counted from the replicas at the
//!   start of each period (the HPA's defaults: up by 4 pods or 100 %, whichever is more, per
//!   15 s; down by 100 % per 15 s); `selectPolicy: Disabled` turns a direction off.
//!
//! Pause annotations are the running scaler's ([`crate::scaler`]). Not yet: `Utilization`
//! targets, fallback `behavior` other than the static count.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use model::kinds::misc::ScaledObjectSpec;
use serde_json::Value;

/// KEDA's defaults.
pub const POLLING_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
pub const COOLDOWN_PERIOD_DEFAULT: Duration = Duration::from_secs(300);
pub const MAX_REPLICAS_DEFAULT: u32 = 100;
/// The HPA's defaults.
pub const SCALE_DOWN_WINDOW_DEFAULT: Duration = Duration::from_secs(300);
pub const TOLERANCE: f64 = 0.1;
/// The HPA's default rate rules (`behavior` without `policies`).
pub const RATE_PERIOD_DEFAULT: Duration = Duration::from_secs(15);
/// The longest period a rate policy may have (the HPA's bound: 30 minutes).
pub const RATE_PERIOD_MAX: Duration = Duration::from_secs(1800);
/// The most replicas trellis will set, whatever a ScaledObject asks.
pub const REPLICAS_MAX: u32 = 10_000;
/// The longest stabilization window taken (the HPA's own bound: one hour).
pub const WINDOW_MAX: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricType {
    AverageValue,
    Value,
}

/// Which policy's limit wins when several are given (`selectPolicy`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Select {
    /// The one that allows the largest change (the default).
    Max,
    /// The one that allows the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateKind {
    Pods,
    Percent,
}

/// One HPA scaling policy: at most `value` pods (or percent) per `period`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    pub kind: RateKind,
    pub value: u32,
    pub period: Duration,
}

/// The rate rules of one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    pub select: Select,
    pub policies: Vec<Rate>,
}

impl Rules {
    /// The HPA's defaults for scaling up: 4 pods or 100 % per 15 s, whichever is more.
    pub fn up_default() -> Rules {
        Rules {
            select: Select::Max,
            policies: vec![
                Rate {
                    kind: RateKind::Percent,
                    value: 100,
                    period: RATE_PERIOD_DEFAULT,
                },
                Rate {
                    kind: RateKind::Pods,
                    value: 4,
                    period: RATE_PERIOD_DEFAULT,
                },
            ],
        }
    }

    /// The HPA's defaults for scaling down: 100 % per 15 s.
    pub fn down_default() -> Rules {
        Rules {
            select: Select::Max,
            policies: vec![Rate {
                kind: RateKind::Percent,
                value: 100,
                period: RATE_PERIOD_DEFAULT,
            }],
        }
    }

    /// `behavior.<dir>`'s `selectPolicy` and `policies` over `default`; problems at `at`.
    fn read(v: &Value, at: &str, default: Rules, problems: &mut Vec<(String, String)>) -> Rules {
        let select = match &v["selectPolicy"] {
            Value::Null => default.select,
            Value::String(s) if s == "Max" => Select::Max,
            Value::String(s) if s == "Min" => Select::Min,
            Value::String(s) if s == "Disabled" => Select::Disabled,
            other => {
                problems.push((
                    format!("{at}.selectPolicy"),
                    format!("{other}: Max, Min or Disabled"),
                ));
                default.select
            }
        };
        let policies = match &v["policies"] {
            Value::Null => default.policies,
            Value::Array(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let here = format!("{at}.policies[{i}]");
                    let kind = match p["type"].as_str() {
                        Some("Pods") => RateKind::Pods,
                        Some("Percent") => RateKind::Percent,
                        _ => {
                            problems.push((format!("{here}.type"), "Pods or Percent".into()));
                            return None;
                        }
                    };
                    let value = match p["value"].as_u64().and_then(|v| u32::try_from(v).ok()) {
                        Some(v) if v > 0 => v,
                        _ => {
                            problems.push((format!("{here}.value"), "a number above 0".into()));
                            return None;
                        }
                    };
                    let period = match p["periodSeconds"].as_u64().map(Duration::from_secs) {
                        Some(d) if !d.is_zero() && d <= RATE_PERIOD_MAX => d,
                        _ => {
                            problems.push((
                                format!("{here}.periodSeconds"),
                                format!("1 to {} seconds", RATE_PERIOD_MAX.as_secs()),
                            ));
                            return None;
                        }
                    };
                    Some(Rate {
                        kind,
                        value,
                        period,
                    })
                })
                .collect(),
            _ => {
                problems.push((
                    format!("{at}.policies"),
                    "a list of at least one policy".into(),
                ));
                default.policies
            }
        };
        Rules { select, policies }
    }
}

/// One trigger's target.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub kind: MetricType,
    pub threshold: f64,
    pub activation: f64,
}

/// A ScaledObject compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    pub idle: Option<u32>,
    pub polling: Duration,
    pub cooldown: Duration,
    /// (failureThreshold, replicas)
    pub fallback: Option<(u32, u32)>,
    pub targets: Vec<Target>,
    pub down_window: Duration,
    pub up_window: Duration,
    pub up_rules: Rules,
    pub down_rules: Rules,
    pub restore_original: bool,
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Policy {
    /// The policy of `spec`, or every problem with its field path.
    pub fn from_spec(spec: &ScaledObjectSpec) -> Result<Policy, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let min = spec.min_replica_count.unwrap_or(0);
        let max = spec.max_replica_count.unwrap_or(MAX_REPLICAS_DEFAULT);
        if max > REPLICAS_MAX {
            problems.push((
                "spec.maxReplicaCount".into(),
                format!("{max} is above trellis's bound of {REPLICAS_MAX}"),
            ));
        }
        if min > max {
            problems.push((
                "spec.minReplicaCount".into(),
                format!("minReplicaCount {min} is above maxReplicaCount {max}"),
            ));
        }
        if max == 0 {
            problems.push(("spec.maxReplicaCount".into(), "must be at least 1".into()));
        }
        let mut targets = Vec::new();
        for (i, t) in spec.triggers.iter().enumerate() {
            let at = |f: &str| format!("spec.triggers[{i}].{f}");
            let kind = match t.metric_type.as_deref() {
                None | Some("AverageValue") => MetricType::AverageValue,
                Some("Value") => MetricType::Value,
                Some(other) => {
                    problems.push((
                        at("metricType"),
                        format!("{other:?}: AverageValue or Value (Utilization is not supported)"),
                    ));
                    continue;
                }
            };
            if let Err((path, msg)) = crate::trigger::Trigger::from_spec(t) {
                problems.push((at(&path), msg));
                continue;
            }
            // metrics-api names its target `targetValue`, the others `threshold`.
            let (key, activation_key) = match t.type_.as_str() {
                "metrics-api" => ("targetValue", "activationTargetValue"),
                _ => ("threshold", "activationThreshold"),
            };
            let threshold = match number(t.metadata.get(key)) {
                Some(v) if v > 0.0 && v.is_finite() => v,
                _ => {
                    problems.push((
                        at(&format!("metadata.{key}")),
                        "a number above 0 is required".into(),
                    ));
                    continue;
                }
            };
            let activation = match t.metadata.get(activation_key) {
                None => 0.0,
                v => match number(v) {
                    Some(a) if a.is_finite() => a,
                    _ => {
                        problems.push((
                            at(&format!("metadata.{activation_key}")),
                            "not a number".into(),
                        ));
                        continue;
                    }
                },
            };
            targets.push(Target {
                kind,
                threshold,
                activation,
            });
        }
        if spec.triggers.is_empty() {
            problems.push(("spec.triggers".into(), "at least one trigger".into()));
        }
        let advanced = spec.advanced.clone().unwrap_or(Value::Null);
        let behavior = &advanced["horizontalPodAutoscalerConfig"]["behavior"];
        let window =
            |dir: &str, default: Duration, problems: &mut Vec<(String, String)>| match &behavior
                [dir]["stabilizationWindowSeconds"]
            {
                Value::Null => default,
                v => match v.as_u64().map(Duration::from_secs) {
                    Some(d) if d <= WINDOW_MAX => d,
                    _ => {
                        problems.push((
                            format!(
                                "spec.advanced.horizontalPodAutoscalerConfig.behavior.{dir}.\
                                 stabilizationWindowSeconds"
                            ),
                            format!("0 to {} seconds", WINDOW_MAX.as_secs()),
                        ));
                        default
                    }
                },
            };
        let down_window = window("scaleDown", SCALE_DOWN_WINDOW_DEFAULT, &mut problems);
        let up_window = window("scaleUp", Duration::ZERO, &mut problems);
        let at = "spec.advanced.horizontalPodAutoscalerConfig.behavior";
        let up_rules = Rules::read(
            &behavior["scaleUp"],
            &format!("{at}.scaleUp"),
            Rules::up_default(),
            &mut problems,
        );
        let down_rules = Rules::read(
            &behavior["scaleDown"],
            &format!("{at}.scaleDown"),
            Rules::down_default(),
            &mut problems,
        );
        let fallback = spec
            .fallback
            .as_ref()
            .map(|f| (f.failure_threshold, f.replicas));
        if let Some((threshold, replicas)) = fallback {
            if threshold == 0 {
                problems.push((
                    "spec.fallback.failureThreshold".into(),
                    "must be at least 1".into(),
                ));
            }
            if replicas > REPLICAS_MAX {
                problems.push((
                    "spec.fallback.replicas".into(),
                    format!("above trellis's bound of {REPLICAS_MAX}"),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Policy {
            min,
            max,
            idle: spec.idle_replica_count,
            polling: spec
                .polling_interval
                .map_or(POLLING_INTERVAL_DEFAULT, |s| Duration::from_secs(s.into())),
            cooldown: spec
                .cooldown_period
                .map_or(COOLDOWN_PERIOD_DEFAULT, |s| Duration::from_secs(s.into())),
            fallback,
            targets,
            down_window,
            up_window,
            up_rules,
            down_rules,
            restore_original: advanced["restoreToOriginalReplicaCount"] == Value::Bool(true),
        })
    }
}

/// What a ScaledObject remembers between polls.
#[derive(Clone, Debug, Default)]
pub struct State {
    recommendations: VecDeque<(Instant, u32)>,
    /// The changes made (+ up, - down), for the rate policies' periods.
    changes: VecDeque<(Instant, i64)>,
    failures: u32,
    last_active: Option<Instant>,
}

/// One poll's outcome, with KEDA's conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub replicas: u32,
    pub active: bool,
    pub fallback: bool,
    /// Why, for status and logs.
    pub reason: String,
}

/// One poll: `metrics` holds each trigger's value (in `policy.targets` order) or why it could
/// not be read; `current` is the target's replica count now.
pub fn step(
    policy: &Policy,
    state: &mut State,
    now: Instant,
    current: u32,
    metrics: &[Result<f64, String>],
) -> Decision {
    if let Some(err) = metrics.iter().find_map(|m| m.as_ref().err()) {
        state.failures = state.failures.saturating_add(1);
        if let Some((threshold, replicas)) = policy.fallback
            && state.failures >= threshold
        {
            return Decision {
                replicas,
                active: false,
                fallback: true,
                reason: format!(
                    "fallback: {} failed polls in a row (last: {err})",
                    state.failures
                ),
            };
        }
        return Decision {
            replicas: current,
            active: false,
            fallback: false,
            reason: format!("kept: a trigger failed ({err})"),
        };
    }
    state.failures = 0;
    let values: Vec<f64> = metrics
        .iter()
        .filter_map(|m| m.as_ref().ok().copied())
        .collect();
    let active = policy
        .targets
        .iter()
        .zip(&values)
        .any(|(t, v)| *v > t.activation);
    if active {
        state.last_active = Some(now);
    }
    let floor = policy.min.max(1);
    if !active {
        let idle = policy.idle.unwrap_or(0);
        let cooled = state
            .last_active
            .is_none_or(|t| now.duration_since(t) >= policy.cooldown);
        if policy.min == 0 && cooled {
            state.recommendations.clear();
            return Decision {
                replicas: idle,
                active: false,
                fallback: false,
                reason: format!("idle: no trigger active for the cooldown ({idle} replicas)"),
            };
        }
    }
    // KEDA activates a target at zero; the HPA takes it from there.
    let current = if current == 0 { floor } else { current };
    let desired = policy
        .targets
        .iter()
        .zip(&values)
        .map(|(t, v)| hpa_desired(t, *v, current))
        .max()
        .unwrap_or(current)
        .clamp(floor, policy.max.max(floor));
    // Stabilization, as the HPA does it: this recommendation and those of the window before.
    let keep = policy.down_window.max(policy.up_window);
    while state
        .recommendations
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) >= keep)
    {
        state.recommendations.pop_front();
    }
    let within = |w: Duration| {
        state
            .recommendations
            .iter()
            .filter(move |(t, _)| now.duration_since(*t) < w)
            .map(|(_, r)| *r)
    };
    let up = within(policy.up_window).fold(desired, u32::min);
    let down = within(policy.down_window).fold(desired, u32::max);
    state.recommendations.push_back((now, desired));
    let stabilized = current.max(up).min(down);
    let replicas = rate_limited(policy, state, now, current, stabilized);
    if replicas != current {
        state
            .changes
            .push_back((now, i64::from(replicas) - i64::from(current)));
    }
    let reason = if replicas == desired {
        format!("desired {desired} from the triggers")
    } else if replicas == stabilized {
        format!("{replicas}: desired {desired}, held by the stabilization window")
    } else {
        format!("{replicas}: desired {desired}, limited by the scaling policies")
    };
    Decision {
        replicas,
        active,
        fallback: false,
        reason,
    }
}

/// The HPA's rate rules on a change from `current` to `want`: each policy allows a change
/// over its period counted from the replicas at the period's start; `selectPolicy` picks the
/// largest or smallest allowance, or none.
fn rate_limited(policy: &Policy, state: &mut State, now: Instant, current: u32, want: u32) -> u32 {
    let longest = policy
        .up_rules
        .policies
        .iter()
        .chain(&policy.down_rules.policies)
        .map(|r| r.period)
        .max()
        .unwrap_or(RATE_PERIOD_DEFAULT);
    while state
        .changes
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) >= longest)
    {
        state.changes.pop_front();
    }
    let (current, want_i) = (i64::from(current), i64::from(want));
    let rules = match want_i.cmp(&current) {
        std::cmp::Ordering::Equal => return want,
        std::cmp::Ordering::Greater => &policy.up_rules,
        std::cmp::Ordering::Less => &policy.down_rules,
    };
    let up = want_i > current;
    if rules.select == Select::Disabled || rules.policies.is_empty() {
        return u32::try_from(current).unwrap_or(want);
    }
    let allowances = rules.policies.iter().map(|r| {
        let (added, removed) = state
            .changes
            .iter()
            .filter(|(t, _)| now.duration_since(*t) < r.period)
            .fold(
                (0i64, 0i64),
                |(a, d), (_, c)| {
                    if *c > 0 { (a + c, d) } else { (a, d - c) }
                },
            );
        let start = (current - added + removed).max(0) as f64;
        let v = f64::from(r.value);
        match (r.kind, up) {
            (RateKind::Pods, true) => start + v,
            (RateKind::Percent, true) => (start * (1.0 + v / 100.0)).ceil(),
            (RateKind::Pods, false) => start - v,
            (RateKind::Percent, false) => (start * (1.0 - v / 100.0)).floor(),
        }
    });
    // Up, Max picks the highest limit; down, Max picks the lowest (the largest change).
    let limit = match (rules.select, up) {
        (Select::Max, true) | (Select::Min, false) => allowances.fold(f64::MIN, f64::max),
        _ => allowances.fold(f64::MAX, f64::min),
    } as i64;
    let out = if up {
        want_i.min(limit.max(current))
    } else {
        want_i.max(limit.min(current))
    };
    u32::try_from(out.clamp(0, i64::from(REPLICAS_MAX))).unwrap_or(want)
}

/// The HPA's replica count for one external metric target.
fn hpa_desired(t: &Target, value: f64, current: u32) -> u32 {
    let current_f = f64::from(current.max(1));
    let ratio = match t.kind {
        MetricType::AverageValue => value / current_f / t.threshold,
        MetricType::Value => value / t.threshold,
    };
    if !ratio.is_finite() || ratio < 0.0 {
        return current;
    }
    if (ratio - 1.0).abs() <= TOLERANCE {
        return current;
    }
    let want = match t.kind {
        MetricType::AverageValue => (value / t.threshold).ceil(),
        MetricType::Value => (current_f * ratio).ceil(),
    };
    want.clamp(0.0, f64::from(REPLICAS_MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ScaledObjectSpec {
        serde_json::from_value(serde_json::from_str::<Value>(yaml).expect("json")).expect("spec")
    }

    /// The corpus's envoy-internal ScaledObject.
    fn corpus() -> Policy {
        Policy::from_spec(&spec(
            r#"{"scaleTargetRef": {"name": "envoy-internal"}, "cooldownPeriod": 5,
                "minReplicaCount": 1, "maxReplicaCount": 2,
                "fallback": {"failureThreshold": 2, "replicas": 1},
                "advanced": {"restoreToOriginalReplicaCount": true,
                  "horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}},
                "triggers": [{"type": "prometheus", "metadata": {"serverAddress": "http://p:9090", "query": "q", "threshold": "1"}}]}"#,
        ))
        .expect("valid")
    }

    #[test]
    fn the_corpus_policy() {
        let p = corpus();
        assert_eq!((p.min, p.max), (1, 2));
        assert_eq!(p.cooldown, Duration::from_secs(5));
        assert_eq!(p.polling, POLLING_INTERVAL_DEFAULT);
        assert_eq!(p.fallback, Some((2, 1)));
        assert_eq!(p.down_window, Duration::from_secs(5));
        assert_eq!(p.up_window, Duration::ZERO);
        assert!(p.restore_original);
        assert_eq!(p.targets[0].kind, MetricType::AverageValue);
    }

    #[test]
    fn average_value_up_at_once_down_after_the_window() {
        let p = corpus();
        let mut s = State::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // The corpus query is 1 - min(success): 0 when healthy, 1 when a probe fails. With
        // AverageValue and threshold 1 that asks for ceil(1/1) = 1 replica: the HPA does not
        // scale the corpus's target up on one failing probe; a value of 2 would.
        assert_eq!(step(&p, &mut s, at(0), 1, &[Ok(0.0)]).replicas, 1);
        assert_eq!(step(&p, &mut s, at(1), 1, &[Ok(1.0)]).replicas, 1);
        let up = step(&p, &mut s, at(2), 1, &[Ok(2.0)]);
        assert_eq!(up.replicas, 2, "{up:?}");
        assert!(up.active);
        // Down: held for the 5 s window, then allowed.
        let held = step(&p, &mut s, at(4), 2, &[Ok(0.0)]);
        assert_eq!(held.replicas, 2, "{held:?}");
        assert!(held.reason.contains("stabilization"), "{held:?}");
        assert_eq!(step(&p, &mut s, at(8), 2, &[Ok(0.0)]).replicas, 1);
        // Never above max.
        assert_eq!(step(&p, &mut s, at(9), 1, &[Ok(50.0)]).replicas, 2);
    }

    #[test]
    fn value_metric_type_and_tolerance() {
        let p = Policy::from_spec(&spec(
            r#"{"scaleTargetRef": {"name": "x"}, "minReplicaCount": 1, "maxReplicaCount": 10,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}},
                "triggers": [{"type": "prometheus", "metricType": "Value", "metadata": {"serverAddress": "http://p:9090", "query": "q", "threshold": 100}}]}"#,
        ))
        .expect("valid");
        let mut s = State::default();
        let now = Instant::now();
        // 4 replicas at 105% of target: within tolerance, no change.
        assert_eq!(step(&p, &mut s, now, 4, &[Ok(105.0)]).replicas, 4);
        // At 150%: ceil(4 × 1.5) = 6.
        assert_eq!(step(&p, &mut s, now, 4, &[Ok(150.0)]).replicas, 6);
        // At 20%: ceil(6 × 0.2) = 2 (no window).
        assert_eq!(step(&p, &mut s, now, 6, &[Ok(20.0)]).replicas, 2);
    }

    #[test]
    fn fallback_after_the_threshold_and_back() {
        let p = corpus();
        let mut s = State::default();
        let now = Instant::now();
        let first = step(&p, &mut s, now, 2, &[Err("connection refused".into())]);
        assert_eq!((first.replicas, first.fallback), (2, false), "{first:?}");
        let second = step(&p, &mut s, now, 2, &[Err("connection refused".into())]);
        assert_eq!((second.replicas, second.fallback), (1, true), "{second:?}");
        assert!(second.reason.contains("connection refused"));
        let ok = step(&p, &mut s, now, 1, &[Ok(0.0)]);
        assert!(!ok.fallback);
    }

    #[test]
    fn scale_to_zero_after_the_cooldown_and_activation() {
        let p = Policy::from_spec(&spec(
            r#"{"scaleTargetRef": {"name": "x"}, "cooldownPeriod": 60, "maxReplicaCount": 3,
                "triggers": [{"type": "prometheus", "metadata": {"serverAddress": "http://p:9090", "query": "q", "threshold": "10", "activationThreshold": "2"}}]}"#,
        ))
        .expect("valid");
        let mut s = State::default();
        let t0 = Instant::now();
        // Below the activation threshold: not active; never active before, so idle at once.
        let d = step(&p, &mut s, t0, 1, &[Ok(1.0)]);
        assert_eq!((d.replicas, d.active), (0, false), "{d:?}");
        // Active: from 0 to ceil(25 / 10) = 3.
        let d = step(&p, &mut s, t0 + Duration::from_secs(1), 0, &[Ok(25.0)]);
        assert_eq!((d.replicas, d.active), (3, true), "{d:?}");
        // Inactive again: held until the cooldown ran out.
        let d = step(&p, &mut s, t0 + Duration::from_secs(30), 3, &[Ok(0.0)]);
        assert_ne!(d.replicas, 0, "{d:?}");
        let d = step(&p, &mut s, t0 + Duration::from_secs(62), 3, &[Ok(0.0)]);
        assert_eq!(d.replicas, 0, "{d:?}");
    }

    #[test]
    fn the_hpa_default_rate_and_policies_from_behavior() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let with = |behavior: &str| {
            Policy::from_spec(&spec(&format!(
                r#"{{"scaleTargetRef": {{"name": "x"}}, "minReplicaCount": 1, "maxReplicaCount": 50,
                    "advanced": {{"horizontalPodAutoscalerConfig": {{"behavior": {behavior}}}}},
                    "triggers": [{{"type": "prometheus", "metadata": {{"serverAddress": "http://p:9090", "query": "q", "threshold": "1"}}}}]}}"#
            )))
            .expect("valid")
        };
        // The defaults: up by max(4 pods, 100 %) per 15 s. From 1 towards 20: 5, then 10 once
        // the period has passed, 20 after another.
        let p = with(r#"{"scaleDown": {"stabilizationWindowSeconds": 0}}"#);
        assert_eq!(p.up_rules, Rules::up_default());
        let mut s = State::default();
        let d = step(&p, &mut s, at(0), 1, &[Ok(20.0)]);
        assert_eq!(d.replicas, 5, "{d:?}");
        assert!(
            d.reason.contains("limited by the scaling policies"),
            "{d:?}"
        );
        assert_eq!(step(&p, &mut s, at(5), 5, &[Ok(20.0)]).replicas, 5);
        assert_eq!(step(&p, &mut s, at(15), 5, &[Ok(20.0)]).replicas, 10);
        assert_eq!(step(&p, &mut s, at(30), 10, &[Ok(20.0)]).replicas, 20);
        // Down by 100 %: at once to what is wanted.
        assert_eq!(step(&p, &mut s, at(31), 20, &[Ok(2.0)]).replicas, 2);

        // One pod per minute up (Min of two policies), down disabled.
        let p = with(
            r#"{"scaleUp": {"selectPolicy": "Min", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}, {"type": "Percent", "value": 200, "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": "Disabled"}}"#,
        );
        let mut s = State::default();
        assert_eq!(step(&p, &mut s, at(0), 2, &[Ok(6.0)]).replicas, 3);
        assert_eq!(step(&p, &mut s, at(30), 3, &[Ok(6.0)]).replicas, 3);
        assert_eq!(step(&p, &mut s, at(60), 3, &[Ok(6.0)]).replicas, 4);
        assert_eq!(step(&p, &mut s, at(61), 4, &[Ok(1.0)]).replicas, 4);

        // Down by half per 10 s.
        let p = with(
            r#"{"scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 50, "periodSeconds": 10}]}}"#,
        );
        let mut s = State::default();
        assert_eq!(step(&p, &mut s, at(0), 8, &[Ok(1.0)]).replicas, 4);
        assert_eq!(step(&p, &mut s, at(5), 4, &[Ok(1.0)]).replicas, 4);
        assert_eq!(step(&p, &mut s, at(10), 4, &[Ok(1.0)]).replicas, 2);

        // Refused with their fields.
        let e = Policy::from_spec(&spec(
            r#"{"scaleTargetRef": {"name": "x"},
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleUp": {"selectPolicy": "Most", "policies": [{"type": "Pod", "value": 0, "periodSeconds": 4000}]}, "scaleDown": {"policies": []}}}},
                "triggers": [{"type": "prometheus", "metadata": {"serverAddress": "http://p:9090", "query": "q", "threshold": "1"}}]}"#,
        ))
        .expect_err("invalid");
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        let b = "spec.advanced.horizontalPodAutoscalerConfig.behavior";
        for want in [
            format!("{b}.scaleUp.selectPolicy"),
            format!("{b}.scaleUp.policies[0].type"),
            format!("{b}.scaleDown.policies"),
        ] {
            assert!(paths.contains(&want.as_str()), "{want} not in {e:?}");
        }
    }

    #[test]
    fn refused_with_field_paths() {
        let e = Policy::from_spec(&spec(
            r#"{"scaleTargetRef": {"name": "x"}, "minReplicaCount": 3, "maxReplicaCount": 2,
                "fallback": {"failureThreshold": 0, "replicas": 1},
                "triggers": [{"type": "prometheus", "metadata": {"serverAddress": "http://p:9090", "query": "q", "threshold": "zero"}},
                             {"type": "prometheus", "metricType": "Utilization", "metadata": {"threshold": 1}}]}"#,
        ))
        .expect_err("invalid");
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"spec.minReplicaCount"), "{e:?}");
        assert!(
            paths.contains(&"spec.triggers[0].metadata.threshold"),
            "{e:?}"
        );
        assert!(paths.contains(&"spec.triggers[1].metricType"), "{e:?}");
        assert!(paths.contains(&"spec.fallback.failureThreshold"), "{e:?}");
    }
}
