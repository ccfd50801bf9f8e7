//! The filter flags of `hubble observe` (`--pod`, `--from-ip`, `--http-status`, `--type`,
//! ...) and the whitelist they make. One definition serves every front end: `trellis
//! observe` takes [`Query`] as command-line flags, the web UI as a query string whose keys
//! are the same flag names (`?http-status=404&from-pod=apps/`), parsed by the same clap
//! definition, so the two cannot drift apart.
//!
//! Not here: what to read (`--last`, `--since`, `--follow`) and how to print; those belong
//! to each front end.

use crate::proto::flow::{EventTypeFilter, FlowFilter, Verdict};

use crate::packet::EventKind as Packet;

/// Cilium's monitor message type of L7 (proxy access log) events.
pub const EVENT_L7: i32 = 129;

/// Bytes of query string the UI accepts (filters are short; this bounds the parse).
pub const QUERY_BYTES_MAX: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventKind {
    L7,
    Dns,
    Drop,
    Trace,
    PolicyVerdict,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("--verdict {0:?}: not a verdict (FORWARDED, DROPPED, ERROR, ...)")]
    Verdict(String),
    #[error("query string longer than {QUERY_BYTES_MAX} bytes")]
    TooLong,
    #[error("{0}")]
    Flags(String),
}

/// The filter flags, as `hubble observe` has them.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct Query {
    /// Flows from or to pods of this namespace (qualifies --pod names without one).
    #[arg(short, long)]
    pub namespace: Vec<String>,
    /// Flows from or to this pod: [NAMESPACE/]NAME-PREFIX.
    #[arg(long)]
    pub pod: Vec<String>,
    #[arg(long)]
    pub from_pod: Vec<String>,
    #[arg(long)]
    pub to_pod: Vec<String>,
    #[arg(long)]
    pub from_namespace: Vec<String>,
    #[arg(long)]
    pub to_namespace: Vec<String>,
    /// Flows from or to this address or CIDR.
    #[arg(long)]
    pub ip: Vec<String>,
    #[arg(long)]
    pub from_ip: Vec<String>,
    #[arg(long)]
    pub to_ip: Vec<String>,
    /// Flows from or to endpoints with these labels (a selector: app=web,tier!=db).
    #[arg(short, long)]
    pub label: Vec<String>,
    #[arg(long)]
    pub from_label: Vec<String>,
    #[arg(long)]
    pub to_label: Vec<String>,
    /// Flows from or to this port.
    #[arg(long)]
    pub port: Vec<String>,
    #[arg(long)]
    pub from_port: Vec<String>,
    #[arg(long)]
    pub to_port: Vec<String>,
    /// FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED.
    #[arg(long)]
    pub verdict: Vec<String>,
    /// tcp, udp, icmp, http, dns, ...
    #[arg(long)]
    pub protocol: Vec<String>,
    /// A status (404) or a prefix (5+).
    #[arg(long)]
    pub http_status: Vec<String>,
    #[arg(long)]
    pub http_method: Vec<String>,
    /// A regular expression on the URL path.
    #[arg(long)]
    pub http_path: Vec<String>,
    /// A regular expression on DNS query names.
    #[arg(long)]
    pub dns_query: Vec<String>,
    /// Event types.
    #[arg(short = 't', long = "type", value_enum)]
    pub r#type: Vec<EventKind>,
    /// Node name patterns (`*` matches anything).
    #[arg(long)]
    pub node_name: Vec<String>,
}

/// A command line of nothing but the filter flags, for parsing query strings.
#[derive(Debug, clap::Parser)]
#[command(name = "query", no_binary_name = true, disable_help_flag = true)]
struct Flags {
    #[command(flatten)]
    query: Query,
}

impl Query {
    /// Parses a URL query string whose keys are the long flag names (`http-status=5%2B`,
    /// `type=l7`); a key may repeat, empty values are ignored (an empty form input).
    pub fn from_query_string(qs: &str) -> Result<Query, QueryError> {
        if qs.len() > QUERY_BYTES_MAX {
            return Err(QueryError::TooLong);
        }
        let args: Vec<String> = form_urlencoded::parse(qs.as_bytes())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("--{k}={v}"))
            .collect();
        <Flags as clap::Parser>::try_parse_from(args)
            .map(|f| f.query)
            .map_err(|e| {
                let text = e.to_string();
                QueryError::Flags(text.lines().next().unwrap_or_default().to_string())
            })
    }

    /// The whitelist for the flags, as `hubble observe` builds it: flags with a direction
    /// and the rest go into one filter; a flag without one (`--pod`, `--ip`, `--label`,
    /// `--port`, `--namespace`) makes two, one matching it as the source and one as the
    /// destination.
    pub fn whitelist(&self) -> Result<Vec<FlowFilter>, QueryError> {
        let a = self;
        let mut base = FlowFilter {
            source_pod: qualify(&a.from_pod, &a.namespace),
            destination_pod: qualify(&a.to_pod, &a.namespace),
            source_ip: a.from_ip.clone(),
            destination_ip: a.to_ip.clone(),
            source_label: a.from_label.clone(),
            destination_label: a.to_label.clone(),
            source_port: a.from_port.clone(),
            destination_port: a.to_port.clone(),
            verdict: verdicts(&a.verdict)?,
            protocol: a.protocol.clone(),
            http_status_code: a.http_status.clone(),
            http_method: a.http_method.clone(),
            http_path: a.http_path.clone(),
            dns_query: a.dns_query.clone(),
            node_name: a.node_name.clone(),
            ..Default::default()
        };
        base.source_pod
            .extend(a.from_namespace.iter().map(|n| format!("{n}/")));
        base.destination_pod
            .extend(a.to_namespace.iter().map(|n| format!("{n}/")));
        for t in &a.r#type {
            let r#type = match t {
                EventKind::L7 | EventKind::Dns => EVENT_L7,
                EventKind::Drop => Packet::Drop.monitor_type(),
                EventKind::Trace => Packet::Trace.monitor_type(),
                EventKind::PolicyVerdict => Packet::PolicyVerdict.monitor_type(),
            };
            let f = EventTypeFilter {
                r#type,
                match_sub_type: false,
                sub_type: 0,
            };
            if !base.event_type.contains(&f) {
                base.event_type.push(f);
            }
        }
        // `--type dns` is the L7 events that are DNS; with `--type l7` too, all L7 events.
        if a.r#type.contains(&EventKind::Dns) && !a.r#type.contains(&EventKind::L7) {
            base.protocol.push("dns".into());
        }
        // Pods named without --namespace, or namespaces alone, match either side.
        let either_pods: Vec<String> = if a.pod.is_empty() {
            a.namespace
                .iter()
                .filter(|_| a.from_pod.is_empty() && a.to_pod.is_empty())
                .map(|n| format!("{n}/"))
                .collect()
        } else {
            qualify(&a.pod, &a.namespace)
        };
        let either = !either_pods.is_empty()
            || !a.ip.is_empty()
            || !a.label.is_empty()
            || !a.port.is_empty();
        if !either {
            return Ok(if base == FlowFilter::default() {
                Vec::new()
            } else {
                vec![base]
            });
        }
        let mut from = base.clone();
        from.source_pod.extend(either_pods.iter().cloned());
        from.source_ip.extend(a.ip.iter().cloned());
        from.source_label.extend(a.label.iter().cloned());
        from.source_port.extend(a.port.iter().cloned());
        let mut to = base;
        to.destination_pod.extend(either_pods);
        to.destination_ip.extend(a.ip.iter().cloned());
        to.destination_label.extend(a.label.iter().cloned());
        to.destination_port.extend(a.port.iter().cloned());
        Ok(vec![from, to])
    }
}

fn verdicts(names: &[String]) -> Result<Vec<i32>, QueryError> {
    names
        .iter()
        .map(|n| {
            Verdict::from_str_name(&n.to_ascii_uppercase())
                .map(|v| v as i32)
                .ok_or_else(|| QueryError::Verdict(n.clone()))
        })
        .collect()
}

/// `--pod` names with the `--namespace`s they lack.
fn qualify(pods: &[String], namespaces: &[String]) -> Vec<String> {
    pods.iter()
        .flat_map(|p| {
            if p.contains('/') || namespaces.is_empty() {
                vec![p.clone()]
            } else {
                namespaces.iter().map(|n| format!("{n}/{p}")).collect()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whitelist of a query string, with each filter shown as its set fields.
    fn filters(qs: &str) -> Vec<String> {
        Query::from_query_string(qs)
            .expect("parses")
            .whitelist()
            .expect("valid")
            .iter()
            .map(|f| {
                let mut parts = Vec::new();
                let mut add = |name: &str, v: &[String]| {
                    if !v.is_empty() {
                        parts.push(format!("{name}={}", v.join("|")));
                    }
                };
                add("source_pod", &f.source_pod);
                add("destination_pod", &f.destination_pod);
                add("source_ip", &f.source_ip);
                add("destination_ip", &f.destination_ip);
                add("source_label", &f.source_label);
                add("destination_label", &f.destination_label);
                add("source_port", &f.source_port);
                add("destination_port", &f.destination_port);
                add("protocol", &f.protocol);
                add("http_status_code", &f.http_status_code);
                add("http_method", &f.http_method);
                add("http_path", &f.http_path);
                add("dns_query", &f.dns_query);
                add("node_name", &f.node_name);
                let verdicts: Vec<String> = f.verdict.iter().map(i32::to_string).collect();
                add("verdict", &verdicts);
                let types: Vec<String> =
                    f.event_type.iter().map(|t| t.r#type.to_string()).collect();
                add("event_type", &types);
                parts.join(" ")
            })
            .collect()
    }

    /// Query strings and command lines are one parser: every case is checked both ways.
    fn same_as_flags(qs: &str, argv: &[&str]) {
        let from_flags = <Flags as clap::Parser>::try_parse_from(argv)
            .expect("flags parse")
            .query;
        assert_eq!(
            Query::from_query_string(qs).expect("query parses"),
            from_flags,
            "{qs}"
        );
    }

    #[test]
    fn query_strings_make_the_filters_the_flags_make() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("", &[], &[]),
            ("http-status=", &[], &[]),
            (
                "http-status=4%2B",
                &["--http-status", "4+"],
                &["http_status_code=4+"],
            ),
            (
                "http-status=200&http-method=get",
                &["--http-status", "200", "--http-method", "get"],
                &["http_status_code=200 http_method=get"],
            ),
            (
                "http-path=%5E%2Fhello%24",
                &["--http-path", "^/hello$"],
                &["http_path=^/hello$"],
            ),
            (
                "to-port=8080",
                &["--to-port", "8080"],
                &["destination_port=8080"],
            ),
            (
                "port=8080",
                &["--port", "8080"],
                &["source_port=8080", "destination_port=8080"],
            ),
            (
                "ip=127.0.0.1&type=l7",
                &["--ip", "127.0.0.1", "--type", "l7"],
                &[
                    "source_ip=127.0.0.1 event_type=129",
                    "destination_ip=127.0.0.1 event_type=129",
                ],
            ),
            ("type=dns", &["-t", "dns"], &["protocol=dns event_type=129"]),
            (
                "type=dns&type=l7",
                &["-t", "dns", "-t", "l7"],
                &["event_type=129"],
            ),
            ("verdict=dropped", &["--verdict", "dropped"], &["verdict=2"]),
            (
                "namespace=apps&pod=web",
                &["-n", "apps", "--pod", "web"],
                &["source_pod=apps/web", "destination_pod=apps/web"],
            ),
            (
                "namespace=apps",
                &["--namespace", "apps"],
                &["source_pod=apps/", "destination_pod=apps/"],
            ),
            (
                "namespace=apps&from-pod=client",
                &["-n", "apps", "--from-pod", "client"],
                &["source_pod=apps/client"],
            ),
            (
                "from-namespace=a&to-namespace=b",
                &["--from-namespace", "a", "--to-namespace", "b"],
                &["source_pod=a/ destination_pod=b/"],
            ),
            (
                "label=app%3Dweb&from-ip=10.0.0.0%2F8",
                &["-l", "app=web", "--from-ip", "10.0.0.0/8"],
                &[
                    "source_ip=10.0.0.0/8 source_label=app=web",
                    "source_ip=10.0.0.0/8 destination_label=app=web",
                ],
            ),
            (
                "protocol=tcp&protocol=udp&node-name=node-*",
                &[
                    "--protocol",
                    "tcp",
                    "--protocol",
                    "udp",
                    "--node-name",
                    "node-*",
                ],
                &["protocol=tcp|udp node_name=node-*"],
            ),
        ];
        for (qs, argv, want) in cases {
            same_as_flags(qs, argv);
            assert_eq!(filters(qs), *want, "{qs}");
        }
    }

    #[test]
    fn bad_keys_and_values_are_errors_that_name_them() {
        let e = Query::from_query_string("colour=red").expect_err("no such flag");
        assert!(e.to_string().contains("--colour"), "{e}");
        let e = Query::from_query_string("type=carrier-pigeon").expect_err("no such type");
        assert!(e.to_string().contains("carrier-pigeon"), "{e}");
        let e = Query::from_query_string("verdict=maybe")
            .expect("parses")
            .whitelist()
            .expect_err("no such verdict");
        assert_eq!(e, QueryError::Verdict("maybe".into()));
        assert_eq!(
            Query::from_query_string(&"a".repeat(QUERY_BYTES_MAX + 1)),
            Err(QueryError::TooLong)
        );
    }
}
